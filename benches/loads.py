"""Load generators and measurements: wrk (closed loop), h2load (h2 streams), oha (open loop, latency), tls_load
(post-quantum handshakes), an asyncio
client that holds idle TLS connections, and the proxy's CPU time and RSS from /proc."""
import asyncio
import json
import os
import re
import ssl
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, all threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def cpu_idle_ticks(cpu):
    """(idle + iowait, all) jiffies of one CPU so far (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return v[3] + v[4], sum(v)
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def wake_ipis(cpu):
    """Inter-processor interrupts received by one CPU so far: function-call and rescheduling
    IPIs (/proc/interrupts CAL + RES), which is how another CPU wakes a thread sleeping there."""
    col = int(cpu) + 1
    n = 0
    with open("/proc/interrupts") as f:
        for line in f:
            p = line.split()
            if p and p[0] in ("CAL:", "RES:"):
                n += int(p[col])
    return n


def wrk(env, url, conns, seconds, close=False):
    """Runs wrk on the load CPU; returns requests, bytes read, errors."""
    argv = ["taskset", "-c", env.cpu_load, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, env=env.client_env).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    errors = 0
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        errors += sum(int(x) for x in e.groups())
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        errors += int(n.group(1))
    return {"requests": int(m.group(1)), "bytes": float(m.group(4)) * UNITS[m.group(5)], "errors": errors, "raw": out}


def oha(env, url, rate, conns, seconds):
    """Open-loop load at `rate` req/s with latency correction (closed loop at full speed when
    `rate` is None); returns percentiles in ms and the achieved rate."""
    argv = ["taskset", "-c", env.cpu_load, env.oha, "--no-tui", "--output-format", "json", "--insecure",
            "-z", f"{seconds}s", "-c", str(conns)]
    if rate is not None:
        argv += ["-q", str(rate), "--latency-correction"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    return {
        "p50_ms": pct["p50"] * 1000,
        "p99_ms": pct["p99"] * 1000,
        "p999_ms": pct["p99.9"] * 1000,
        "rps": data["summary"]["requestsPerSec"],
        "ok": data["summary"]["successRate"],
    }


def h2load(env, url, conns, streams, seconds, body=None, headers=()):
    """h2load on the load CPU: `conns` h2 connections with `streams` concurrent streams each
    (POSTs of `body` when given); returns requests done and errors (failures, non-2xx)."""
    argv = ["taskset", "-c", env.cpu_load, "h2load", "-t1", f"-c{conns}", f"-m{streams}", f"-D{seconds}",
            "--warm-up-time=1"]
    if body:
        argv += ["-d", body]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, text=True, env=env.client_env).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not codes:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    ok = int(m.group(1)) - sum(int(x) for x in codes.groups())
    errors = sum(int(x) for x in m.groups()[1:]) + sum(int(x) for x in codes.groups())
    return {"requests": ok, "errors": errors, "raw": out}


def tls_load(env, addr, sni, group, seconds, conns):
    """benches/tools/src/tls_load.rs on the load CPU: full TLS 1.3 handshakes offering `group`."""
    argv = ["taskset", "-c", env.cpu_load, env.tls_load, addr, sni, os.path.join(env.work, "ca.pem"), group,
            str(seconds), str(conns)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if not out.stdout.strip():
        raise RuntimeError(f"tls_load failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _hold(host, port, sni, n, ctx):
    """Opens n TLS connections, one request each, and keeps them open."""
    conns = []
    sem = asyncio.Semaphore(64)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni)
            w.write(f"GET /0 HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
            await w.drain()
            await r.readuntil(b"\r\n\r\n")
            conns.append(w)

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def hold_idle(env, n, measure):
    """Holds n idle TLS connections through the proxy while `measure()` runs."""
    ctx = ssl.create_default_context(cafile=os.path.join(env.work, "ca.pem"))

    async def main():
        conns = await _hold("127.0.0.1", env.proxy_port, env.term_host, n, ctx)
        await asyncio.sleep(1.0)
        result = measure()
        for w in conns:
            w.close()
        return result

    return asyncio.run(main())


def measure_cpu(pid, fn):
    """Runs fn(); returns (fn's result, proxy CPU seconds used, wall seconds)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    result = fn()
    return result, cpu_seconds(pid) - c0, time.monotonic() - t0
