#!/usr/bin/env python3
"""Soak: mixed load through one gatehouse for a long time, sampled, then back to baseline.

The load, all at once: full and resumed TLS handshakes, the tcp relay (keep-alive), the http
mode over HTTP/1.1 (wrk) and h2 (h2load), TLS passthrough, WebSocket sessions, idle
connections held the whole time, and clients that vanish mid-handshake and mid-body. Every
few seconds it samples the gateway's RSS, open descriptors, threads, tasks and connections.
The baseline is taken after a short warm-up of the same load and a quiet period (--warmup):
code pages first run under load, the upstream pool and each thread's allocator caches reach
their working size there, so what the check sees is growth with time under load (a leak), not
the first touch of the working set (the cold figures are reported beside it).
After the load stops it waits for the gateway to settle and checks that RSS is back within
10 % of its level before the load and descriptors, connections and tasks at their baseline
(the Pingora #372 class of leak). Writes soak.json and soak.png (a plot) to --out.

Usage: benches/soak.sh [--minutes 60] [--warmup 1] [--interval 5] [--out DIR] [--record] [--only LOADS]
"""
import argparse
import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request

import arms
import harness
import loads

WS_PORT = 18090
ADMIN_PORT = 19801
WS_HOST = "ws.bench.test"
IDLE = 300


def gatehouse_config(env):
    base = arms.Gatehouse(env).config("http", True)
    return base + f"""
[[apps]]
id = "ws"
mode = "http"
default_port = {WS_PORT}
[[apps.instances]]
address = "127.0.0.1"

[admin]
listen = "127.0.0.1:{ADMIN_PORT}"
insecure_no_auth = true
"""


async def ws_origin():
    """Answers a WebSocket upgrade with 101, then echoes whatever bytes come."""
    async def one(r, w):
        try:
            head = await r.readuntil(b"\r\n\r\n")
            key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")]
            import hashlib
            accept = base64.b64encode(hashlib.sha1(key[0] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            while True:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
        except Exception:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(one, "127.0.0.1", WS_PORT)
    async with server:
        await server.serve_forever()


def metric(name):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    return {
        "t": time.time(),
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "rss_anon_mb": int(status["RssAnon"].split()[0]) / 1024,
        "rss_file_mb": int(status["RssFile"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
        "tasks": metric("gatehouse_tasks_alive"),
        "connections": metric("gatehouse_connections_active"),
    }


class Load:
    """Runs every load until `stop` is set; counts what each did."""

    def __init__(self, env, stop):
        self.env, self.stop = env, stop
        self.counts = {}
        self.lock = threading.Lock()
        self.ctx = ssl.create_default_context(cafile=os.path.join(env.work, "ca.pem"))
        self.port = arms.PROXY_PORT
        self.only = None

    def count(self, name, n=1):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def loop(self, name, fn):
        if self.only and name not in self.only:
            return threading.Thread(name=name)
        def run():
            while not self.stop.is_set():
                try:
                    fn()
                    self.count(name)
                except Exception as e:  # a fault the load provokes is not the harness's
                    self.count(name + "_errors")
                    if not self.stop.is_set():
                        time.sleep(0.05)
        t = threading.Thread(target=run, daemon=True, name=name)
        t.start()
        return t

    def tool(self, argv):
        subprocess.run(["taskset", "-c", self.env.cpu_load] + argv, capture_output=True, env=self.env.client_env, timeout=120)

    def wrk(self, host, path, conns, close=False):
        argv = ["wrk", "-t1", f"-c{conns}", "-d10s", "--timeout", "10s"]
        if close:
            argv += ["-H", "Connection: close"]
        return lambda: self.tool(argv + [f"https://{host}:{self.port}{path}"])

    def h2load(self):
        return lambda: self.tool(["h2load", "-c4", "-m8", "-D", "10", f"https://{arms.HTTP_HOST}:{self.port}/f/1k"])

    def tls(self, host, session=None):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.ctx.wrap_socket(s, server_hostname=host, session=session)

    def resumed(self):
        state = {"session": None}

        def one():
            s = self.tls(arms.TERM_HOST, state["session"])
            s.sendall(f"GET /0 HTTP/1.1\r\nHost: {arms.TERM_HOST}\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
            if s.session_reused:
                self.count("resumed_reused")
            state["session"] = s.session
            s.close()
        return one

    def websocket(self):
        def one():
            s = self.tls(WS_HOST)
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET /chat HTTP/1.1\r\nHost: {WS_HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("closed before 101")
                head += chunk
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise RuntimeError(head[:80])
            for _ in range(20):
                frame = bytes([0x81, 0x80 | 5]) + os.urandom(4) + b"hello"
                s.sendall(frame)
                got = b""
                while len(got) < len(frame):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise RuntimeError("closed mid-session")
                    got += chunk
            s.close()
        return one

    def vanish_mid_handshake(self):
        hello = client_hello(arms.TERM_HOST)

        def one():
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.sendall(hello[: len(hello) // 2])
            reset(s)
        return one

    def vanish_mid_body(self):
        def one():
            s = self.tls(arms.TERM_HOST)
            s.sendall(f"GET /f/1m HTTP/1.1\r\nHost: {arms.TERM_HOST}\r\n\r\n".encode())
            got = 0
            while got < 16384:
                chunk = s.recv(16384)
                if not chunk:
                    break
                got += len(chunk)
            reset(s)
        return one

    def vanish_mid_upload(self):
        def one():
            s = self.tls(arms.HTTP_HOST)
            s.sendall(f"POST /0 HTTP/1.1\r\nHost: {arms.HTTP_HOST}\r\nContent-Length: 1000000\r\n\r\n".encode() + b"x" * 20000)
            reset(s)
        return one


def reset(s):
    """Closes with RST (SO_LINGER 0), as a client that vanished."""
    import struct
    raw = s if isinstance(s, socket.socket) else s
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def client_hello(host):
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def hold_idle(env, n, stop):
    ctx = ssl.create_default_context(cafile=os.path.join(env.work, "ca.pem"))
    conns = await loads._hold("127.0.0.1", arms.PROXY_PORT, arms.TERM_HOST, n, ctx)
    while not stop.is_set():
        await asyncio.sleep(0.5)
    for w in conns:
        w.close()


def plot(samples, marks, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t0 = samples[0]["t"]
    xs = [(s["t"] - t0) / 60 for s in samples]
    panels = [("rss_mb", "RSS (MB)"), ("fds", "open descriptors"), ("tasks", "tasks alive"), ("connections", "connections open")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 9), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        ax.plot(xs, [s[key] if s[key] is not None else float("nan") for s in samples], lw=1.2)
        ax.set_ylabel(label)
        ax.axvspan((marks["load_start"] - t0) / 60, (marks["load_end"] - t0) / 60, color="orange", alpha=0.15)
        if "warmup_start" in marks:
            ax.axvspan((marks["warmup_start"] - t0) / 60, (marks["warmup_end"] - t0) / 60, color="grey", alpha=0.15)
        ax.grid(alpha=0.3)
    axes[0].set_title("gatehouse soak: warm-up (grey), quiet, mixed load (orange), quiet")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def run_load(env, args, samples, marks, seconds, phase):
    """Every load at once for `seconds`, sampling; returns the load's counts and the peaks."""
    start = len(samples)
    stop = threading.Event()
    load = Load(env, stop)
    load.only = args.only
    t0 = time.time()
    every = [
        load.loop("relay_h1", load.wrk(arms.TERM_HOST, "/f/1k", 8)),
        load.loop("full_handshakes", load.wrk(arms.TERM_HOST, "/0", 2, close=True)),
        load.loop("http_h1", load.wrk(arms.HTTP_HOST, "/f/1k", 8)),
        load.loop("http_h2", load.h2load()),
        load.loop("passthrough", load.wrk(arms.PASS_HOST, "/f/1k", 4)),
        load.loop("resumed_handshakes", load.resumed()),
        load.loop("websocket_sessions", load.websocket()),
        load.loop("vanished_mid_handshake", load.vanish_mid_handshake()),
        load.loop("vanished_mid_body", load.vanish_mid_body()),
        load.loop("vanished_mid_upload", load.vanish_mid_upload()),
    ]
    threads = [t for t in every if not args.only or t.name in args.only]
    n_idle = IDLE if not args.only or "idle" in args.only else 0
    idle = threading.Thread(target=lambda: asyncio.run(hold_idle(env, n_idle, stop)), daemon=True)
    idle.start()
    end = t0 + seconds
    next_report = t0 + 60
    while time.time() < end:
        time.sleep(min(args.interval, max(0, end - time.time())))
        samples.append(sample(env.gatehouse_pid))
        if time.time() >= next_report:
            s = samples[-1]
            print(f"soak: {phase} {(time.time() - t0) / 60:.0f} min: RSS {s['rss_mb']:.1f} MB, "
                  f"{s['fds']} fds, {s['tasks']} tasks, {s['connections']} connections", flush=True)
            next_report += 60
    stop.set()
    for t in threads:
        t.join(timeout=30)
    idle.join(timeout=30)
    window = samples[start:] or samples[-1:]
    keys = ("rss_mb", "rss_anon_mb", "rss_file_mb", "fds", "threads", "tasks", "connections")
    peak = {k: max(s[k] for s in window if s[k] is not None) for k in keys}
    return load, peak


def settle(args, proc, samples):
    """Quiet for --settle seconds, sampling."""
    settle_end = time.time() + args.settle
    while time.time() < settle_end:
        time.sleep(min(args.interval, max(0, settle_end - time.time())))
        samples.append(sample(proc.pid))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gatehouse", required=True, help="the gatehouse binary")
    p.add_argument("--minutes", type=float, default=60, help="minutes of load (default 60)")
    p.add_argument("--interval", type=float, default=5, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=1,
                   help="minutes of the same load before the baseline (code pages, pools and per-thread "
                        "allocator caches reach their working size; 0: baseline on the cold process)")
    p.add_argument("--settle", type=float, default=75, help="seconds of quiet before the last sample (longer than the upstream pool's 60 s idle timeout)")
    p.add_argument("--out", default=None, help="where to write soak.json and soak.png")
    p.add_argument("--rss-reported-only", action="store_true",
                   help="report RSS but check only descriptors, tasks and connections (CI: minutes of load)")
    p.add_argument("--only", type=lambda v: v.split(","), default=None,
                   help="run only these loads (comma-separated names as in the report, and idle)")
    p.add_argument("--record", action="store_true", help="write the figures into benches/RESULTS.md and benches/soak.png")
    args = p.parse_args()
    args.gatehouse = os.path.abspath(args.gatehouse)
    env = harness.Env(types.SimpleNamespace(gatehouse=args.gatehouse, oha=None))
    out = args.out or tempfile.mkdtemp(prefix="gatehouse-soak-")
    os.makedirs(out, exist_ok=True)
    harness.setup(env, large=False)  # the soak's largest body is 1 MiB
    with open("/etc/hosts") as f:
        if WS_HOST not in f.read():
            with open("/etc/hosts", "a") as g:
                g.write(f"127.0.0.1 {WS_HOST}\n")
    origin = arms.Origin(env)
    origin.start()
    threading.Thread(target=lambda: asyncio.run(ws_origin()), daemon=True).start()
    config = os.path.join(env.work, "gatehouse.toml")
    with open(config, "w") as f:
        f.write(gatehouse_config(env))
    log = open(os.path.join(out, "gatehouse.log"), "wb")
    proc = subprocess.Popen(["taskset", "-c", env.cpu_proxy, args.gatehouse, "run", "--config", config],
                            cwd=env.work, stdout=log, stderr=log, start_new_session=True)
    env.gatehouse_pid = proc.pid
    samples, marks = [], {}
    try:
        arms.wait_port(arms.PROXY_PORT)
        arms.wait_port(ADMIN_PORT)
        time.sleep(3)
        samples.append(sample(proc.pid))
        cold = samples[-1]
        print(f"soak: started: RSS {cold['rss_mb']:.1f} MB, {cold['fds']} descriptors, "
              f"{cold['tasks']} tasks, {cold['connections']} connections", flush=True)
        if args.warmup > 0:
            marks["warmup_start"] = time.time()
            run_load(env, args, samples, marks, args.warmup * 60, "warm-up")
            marks["warmup_end"] = time.time()
            settle(args, proc, samples)
        before = samples[-1]
        print(f"soak: before the load: RSS {before['rss_mb']:.1f} MB, {before['fds']} descriptors, "
              f"{before['tasks']} tasks, {before['connections']} connections", flush=True)
        marks["load_start"] = time.time()
        load, peak = run_load(env, args, samples, marks, args.minutes * 60, "load")
        marks["load_end"] = time.time()
        marks["settle"] = args.settle
        settle(args, proc, samples)
        after = samples[-1]
        alive = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        origin.stop()
    env.close()  # on success only: the log and the figures are in `out`
    rss_ok = after["rss_mb"] <= before["rss_mb"] * 1.10
    fds_ok = after["fds"] <= before["fds"]
    conns_ok = (after["connections"] or 0) == 0
    tasks_ok = after["tasks"] is not None and after["tasks"] <= before["tasks"]
    result = {
        "minutes": args.minutes,
        "cold": cold, "warmup_minutes": args.warmup,
        "before": before, "peak": peak, "after": after,
        "operations": load.counts,
        "checks": {"alive": alive, "rss_within_10_percent": rss_ok, "descriptors_at_baseline": fds_ok,
                   "connections_zero": conns_ok, "tasks_at_baseline": tasks_ok},
        "samples": samples, "marks": marks,
        "date": time.strftime("%Y-%m-%d"),
    }
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(result, f, indent=1)
    try:
        plot(samples, marks, os.path.join(out, "soak.png"))
    except ImportError:
        print("soak: matplotlib missing, no plot (benches/soak.sh installs it)")
    print(summary(result))
    if args.record:
        record(result, out)
    ok = alive and (rss_ok or args.rss_reported_only) and fds_ok and conns_ok and tasks_ok
    missed = [k for k, v in result["checks"].items() if not v]
    print("soak: " + ("back to baseline" if not missed else "NOT back to baseline: " + ", ".join(missed))
          + (" (RSS reported only)" if args.rss_reported_only and not rss_ok else ""))
    return 0 if ok else 1


def summary(r):
    b, p, a = r["before"], r["peak"], r["after"]
    ops = ", ".join(f"{k} {v}" for k, v in sorted(r["operations"].items()))
    c = r["cold"]
    return (f"| {r['minutes']:g} min | RSS started {c['rss_mb']:.1f} (anonymous {c['rss_anon_mb']:.1f}), "
            f"after {r['warmup_minutes']:g} min warm-up {b['rss_mb']:.1f} → peak {p['rss_mb']:.1f} → {a['rss_mb']:.1f} MB "
            f"(anonymous {b['rss_anon_mb']:.1f} → {p['rss_anon_mb']:.1f} → {a['rss_anon_mb']:.1f}) "
            f"| fds {b['fds']} → {p['fds']} → {a['fds']} | tasks {b['tasks']:.0f} → {a['tasks']:.0f} "
            f"| connections {a['connections']:.0f} after |\noperations: {ops}")


def record(r, out):
    import shutil
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(out, "soak.png"), os.path.join(here, "soak.png"))
    path = os.path.join(here, "RESULTS.md")
    with open(path) as f:
        text = f.read()
    start, end = "<!-- soak -->", "<!-- /soak -->"
    b, p, a, c = r["before"], r["peak"], r["after"], r["cold"]
    ops = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(r["operations"].items()) if not k.endswith("_errors"))
    errs = ", ".join(f"{k[:-7].replace('_', ' ')} {v:,}" for k, v in sorted(r["operations"].items()) if k.endswith("_errors"))
    body = f"""{start}
## Soak: {r['minutes']:g} minutes of mixed load ({r['date']}, `./benches/soak.sh --minutes {r['minutes']:g} --record`)

| | started (cold) | before the load ({r['warmup_minutes']:g} min warm-up, then quiet) | peak | after ({int(r['marks'].get('settle', 30))} s quiet) |
| --- | ---: | ---: | ---: | ---: |
| RSS (MB) | {c['rss_mb']:.1f} | {b['rss_mb']:.1f} | {p['rss_mb']:.1f} | {a['rss_mb']:.1f} |
| of which anonymous (heap, stacks) | {c['rss_anon_mb']:.1f} | {b['rss_anon_mb']:.1f} | {p['rss_anon_mb']:.1f} | {a['rss_anon_mb']:.1f} |
| of which file-backed (code pages) | {c['rss_file_mb']:.1f} | {b['rss_file_mb']:.1f} | {p['rss_file_mb']:.1f} | {a['rss_file_mb']:.1f} |
| open descriptors | {c['fds']} | {b['fds']} | {p['fds']} | {a['fds']} |
| tasks alive | {c['tasks']:.0f} | {b['tasks']:.0f} | {p['tasks']:.0f} | {a['tasks']:.0f} |
| connections open | {c['connections']:.0f} | {b['connections']:.0f} | {p['connections']:.0f} | {a['connections']:.0f} |

Checks: {', '.join(f"{k.replace('_', ' ')}: {'yes' if v else 'NO'}" for k, v in r['checks'].items())}.
Operations (loops of each load; wrk and h2load loops are 10 s runs): {ops}.
Failed operations (faults the load provokes, e.g. the vanishing clients' own resets): {errs or 'none'}.

![RSS, descriptors, tasks and connections over the soak](soak.png)
{end}"""
    if start in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
