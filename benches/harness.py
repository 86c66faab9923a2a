#!/usr/bin/env python3
"""Gatehouse vs nginx, HAProxy, Caddy and h2o, side by side, interleaved, on this machine.

Primary figure: the proxy's CPU time per operation (/proc/<pid>/stat). Throughput ratios are
reported only when the proxy was >= 90 % busy in every arm. See benches/README.md.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import arms
import loads
import report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Env:
    """Paths, CPUs and client settings shared by every run."""

    def __init__(self, args):
        self.work = tempfile.mkdtemp(prefix="gatehouse-bench-")
        ncpu = os.cpu_count() or 1
        self.cpu_proxy = "1" if ncpu > 1 else "0"
        self.cpu_load = "0"
        self.gatehouse = args.gatehouse
        # benches/tools' programs (the floor arms, H3); absent for the soak, which needs none
        self.floor = getattr(args, "floor", None) or ""
        self.tls_load = os.path.join(os.path.dirname(self.floor), "tls_load") if self.floor else ""
        self.oha = args.oha
        self.proxy_port = arms.PROXY_PORT
        self.term_host = arms.TERM_HOST
        # Pin the client side: TLS 1.3, X25519, AES-128-GCM (OpenSSL 3.0 has no ML-KEM, and
        # every server then negotiates the same parameters).
        conf = os.path.join(self.work, "openssl-client.cnf")
        with open(conf, "w") as f:
            f.write("openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
                    "[sys]\nMinProtocol = TLSv1.3\nCiphersuites = TLS_AES_128_GCM_SHA256\nGroups = X25519\n")
        self.client_env = dict(os.environ, OPENSSL_CONF=conf, SSL_CERT_FILE=os.path.join(self.work, "ca.pem"))
        os.environ["OPENSSL_CONF"] = conf  # the asyncio client of M1 uses the same pinning

    def close(self, keep=False):
        """Removes the work directory (certificates, configs, the arms' logs and a 100 MiB
        file: every run left one in /tmp before), or says where it stays."""
        if keep:
            print(f"work dir kept: {self.work}", flush=True)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def setup(env, large=True):
    """The CA, the leaf, the origin's files (the 100 MiB one only when `large`) and /etc/hosts."""
    w = env.work
    sh = lambda cmd: subprocess.run(cmd, shell=True, check=True, cwd=w, capture_output=True)
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 "
       "-subj '/CN=bench CA' -keyout ca.key -out ca.pem")
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=bench.test' "
       "-keyout leaf.key -out leaf.csr")
    with open(os.path.join(w, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:*.bench.test,DNS:bench.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    sh("openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile ext.cnf -out leaf.pem")
    sh("cat leaf.pem ca.pem > chain.pem && cat chain.pem leaf.key > haproxy.pem")
    # one unary gRPC message: the 5-byte frame header (uncompressed, length) and 100 bytes
    with open(os.path.join(w, "grpc.bin"), "wb") as f:
        f.write(b"\x00" + (100).to_bytes(4, "big") + os.urandom(100))
    os.makedirs(os.path.join(w, "www/f"))
    files = [("1k", 1024), ("1m", 1 << 20)] + ([("100m", 100 << 20)] if large else [])
    for name, size in files:
        with open(os.path.join(w, "www/f", name), "wb") as f:
            f.write(os.urandom(size) if size < (1 << 21) else os.urandom(1 << 20) * (size >> 20))
    # wrk takes SNI from the URL's host, so the names must resolve to loopback
    with open("/etc/hosts") as f:
        hosts = f.read()
    line = f"127.0.0.1 {arms.TERM_HOST} {arms.PASS_HOST} {arms.HTTP_HOST} {arms.H2_HOST}\n"
    if line not in hosts:
        with open("/etc/hosts", "a") as f:
            f.write(line)


def workloads(quick, work):
    """(name, role, resumption, runner) in report order; runner(env, arm) -> sample dict."""
    d = 2 if quick else 8
    term = f"https://{arms.TERM_HOST}:{arms.PROXY_PORT}"
    pas = f"https://{arms.PASS_HOST}:{arms.PROXY_PORT}"
    web = f"https://{arms.HTTP_HOST}:{arms.PROXY_PORT}"

    def per_request(url, conns, close=False, unit="req"):
        def run(env, arm, d=d):
            r, cpu, wall = loads.measure_cpu(arm.pid, lambda: loads.wrk(env, url, conns, d, close))
            n = r["requests"]
            return {"value": cpu / max(n, 1) * 1e6, "rate": n / wall, "busy": cpu / wall, "errors": r["errors"], "unit": f"cpu_us_per_{unit}"}
        return run

    def per_gb(url, conns):
        def run(env, arm, d=d):
            r, cpu, wall = loads.measure_cpu(arm.pid, lambda: loads.wrk(env, url, conns, d))
            gb = r["bytes"] / 1e9
            return {"value": cpu / max(gb, 1e-9), "rate": gb / wall, "busy": cpu / wall, "errors": r["errors"], "unit": "cpu_s_per_GB"}
        return run

    def h2_streams(grpc=False):
        url = f"https://{arms.H2_HOST}:{arms.PROXY_PORT}/0"
        body = os.path.join(work, "grpc.bin") if grpc else None
        headers = ("content-type: application/grpc", "te: trailers") if grpc else ()

        def run(env, arm, d=d):
            r, cpu, wall = loads.measure_cpu(arm.pid, lambda: loads.h2load(env, url, 4, 32, d, body, headers))
            n = r["requests"]
            return {"value": cpu / max(n, 1) * 1e6, "rate": n / wall, "busy": cpu / wall, "errors": r["errors"], "unit": "cpu_us_per_req"}
        return run

    def handshakes(group):
        def run(env, arm, d=d):
            addr = f"127.0.0.1:{arms.PROXY_PORT}"
            r, cpu, wall = loads.measure_cpu(arm.pid, lambda: loads.tls_load(env, addr, arms.TERM_HOST, group, d, 32))
            n = r["connections"]
            return {"value": cpu / max(n, 1) * 1e6, "rate": n / wall, "busy": cpu / wall, "errors": r["errors"], "unit": "cpu_us_per_conn"}
        return run

    def idle(n):
        def run(env, arm, d=None):
            before = loads.rss_kb(arm.pid)
            after = loads.hold_idle(env, n, lambda: loads.rss_kb(arm.pid))
            return {"value": (after - before) * 1024 / n / 1000, "rate": None, "busy": None, "errors": 0, "unit": "rss_kB_per_conn"}
        return run

    w = [
        ("K1-0B", "terminate", True, per_request(f"{term}/0", 32)),
        ("K1-1KiB", "terminate", True, per_request(f"{term}/f/1k", 32)),
        ("K1-http-0B", "http", True, per_request(f"{web}/0", 32)),
        ("K1-http-1KiB", "http", True, per_request(f"{web}/f/1k", 32)),
        ("K2-h2-0B", "h2", True, h2_streams()),
        ("K2-grpc-unary", "h2", True, h2_streams(grpc=True)),
        ("H1-full-handshake", "terminate", False, per_request(f"{term}/0", 32, close=True, unit="conn")),
        ("H2-resumed", "terminate", True, per_request(f"{term}/0", 32, close=True, unit="conn")),
        ("H3-pq-x25519", "terminate", False, handshakes("x25519")),
        ("H3-pq-x25519mlkem768", "terminate", False, handshakes("x25519mlkem768")),
        ("B1-terminate-1MiB", "terminate", True, per_gb(f"{term}/f/1m", 4)),
        ("B1-passthrough-1MiB", "passthrough", True, per_gb(f"{pas}/f/1m", 4)),
        ("P1-keepalive", "passthrough", True, per_request(f"{pas}/0", 32)),
        ("P1-newconn", "passthrough", True, per_request(f"{pas}/0", 32, close=True, unit="conn")),
        ("M1-idle-1k", "terminate", True, idle(200 if quick else 1000)),
    ]
    if not quick:
        w.insert(6, ("B1-terminate-100MiB", "terminate", True, per_gb(f"{term}/f/100m", 4)))
        w.insert(7, ("B1-passthrough-100MiB", "passthrough", True, per_gb(f"{pas}/f/100m", 4)))
        w.append(("M1-idle-9k", "terminate", True, idle(9000)))
    return w


def run_latency(env, results, rounds, quick):
    """L1: open loop at 25/50/80 % of the best peer's maximum rate *as driven by oha* (oha and
    the origin share the load CPU; a rate taken from wrk would saturate that CPU, not the proxy)."""
    if not env.oha:
        print("L1 skipped: oha not found", file=sys.stderr)
        return
    d = 3 if quick else 10
    url = f"https://{arms.TERM_HOST}:{arms.PROXY_PORT}/0"
    peak = {}
    for cls in (arms.Nginx, arms.Haproxy):
        arm = cls(env)
        arm.start("terminate", True)
        try:
            loads.wrk(env, url, 32, 1)  # warm-up
            peak[arm.name] = loads.oha(env, url, None, 32, d)["rps"]
        finally:
            arm.stop()
    peer_max = max(peak.values())
    print(f"  L1 peak rate through the best peer, driven by oha: {peer_max:.0f} rps ({peak})", flush=True)
    for pct in (25, 50, 80):
        name = f"L1-p99-{pct}pct"
        rate = int(peer_max * pct / 100)
        results[name] = {}
        for _ in range(rounds):
            for cls in playing("terminate", env):
                arm = cls(env)
                arm.start("terminate", True)
                try:
                    loads.wrk(env, url, 32, 1)  # warm-up
                    idle0, ipis0 = loads.cpu_idle_ticks(env.cpu_load), loads.wake_ipis(env.cpu_proxy)
                    r = loads.oha(env, url, rate, 32, d)
                    idle1, ipis1 = loads.cpu_idle_ticks(env.cpu_load), loads.wake_ipis(env.cpu_proxy)
                    # What sets the tail here is the load CPU (oha and the origin), not the
                    # proxy's: how idle it stayed, and how often it had to wake the proxy's CPU.
                    load_idle = (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
                    ipis = (ipis1 - ipis0) / max(1.0, r["rps"] * d)
                    sample = {"value": r["p99_ms"], "p50": r["p50_ms"], "p999": r["p999_ms"], "rate": r["rps"],
                              "busy": None, "errors": 0 if r["ok"] == 1 else 1, "unit": f"p99_ms_at_{rate}_rps",
                              "load_idle": load_idle, "wake_ipis": ipis}
                    results[name].setdefault(arm.name, []).append(sample)
                    print(f"  {name:24} {arm.name:9} p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} p99.9 {r['p999_ms']:.3f} ms at {r['rps']:.0f} rps;"
                          f" load CPU idle {load_idle:.1%}, wake IPIs to the proxy CPU {ipis:.3f}/req", flush=True)
                finally:
                    arm.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one round, 2 s runs, small M1: a smoke test")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per workload (default 3, quick 1)")
    ap.add_argument("--only", default="", help="comma-separated workload name prefixes")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--gatehouse", default=os.path.join(target, "release/gatehouse"))
    ap.add_argument("--floor", default=os.path.join(target, "release/http_floor"),
                    help="the http_floor binary (benches/tools) (the floor-* reference arms; skipped when absent)")
    ap.add_argument("--oha", default=None, help="oha binary for L1 (open-loop latency)")
    ap.add_argument("--out", default=HERE, help="where RESULTS.md and results.json go")
    ap.add_argument("--keep-work", action="store_true",
                    help="keep the work directory (configs, the arms' logs) instead of removing it at the end")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    env = Env(args)
    print(f"work dir {env.work}; proxy on CPU{env.cpu_proxy}, load and origin on CPU{env.cpu_load}", flush=True)
    finished = False
    try:
        run_all(args, env, rounds)
        finished = True
    finally:
        env.close(keep=args.keep_work or not finished)  # a failed run keeps the arms' logs


def run_all(args, env, rounds):
    setup(env, large=not args.quick)  # --quick runs no 100 MiB row
    origin = arms.Origin(env)
    origin.start()
    results = {}
    try:
        for name, role, resumption, run in workloads(args.quick, env.work):
            if args.only and not any(name.startswith(p) for p in args.only.split(",")):
                continue
            results[name] = {}
            for r in range(rounds):
                for cls in playing(role, env, name):  # interleaved: A B C A B C ...
                    arm = cls(env)
                    arm.start(role, resumption)
                    try:
                        if not name.startswith("M1"):
                            run(env, arm, 2)  # warm-up run, discarded (caches, allocator, tickets)
                        s = run(env, arm)
                        results[name].setdefault(arm.name, []).append(s)
                        busy = f"busy {s['busy']:.0%}" if s["busy"] is not None else ""
                        print(f"  {name:24} r{r} {arm.name:9} {s['value']:10.2f} {s['unit']} {busy} errors {s['errors']}", flush=True)
                    finally:
                        arm.stop()
        if not args.only or "L1" in args.only:
            run_latency(env, results, rounds, args.quick)
    finally:
        origin.stop()
    meta = {
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["./benches/run.sh"] + sys.argv[1:]),
        "rounds": rounds,
        "quick": args.quick,
        "versions": versions(env),
    }
    report.write(args.out, meta, results, env)


def playing(role, env, workload=""):
    """The arms that can play `role` and are installed here (every peer is, via deps.sh). H3
    (post-quantum key exchange) is gatehouse's alone: the peers' OpenSSL 3.0 has no ML-KEM."""
    if workload.startswith("H3-"):
        return [arms.Gatehouse] if os.path.exists(env.tls_load) else []
    return [cls for cls in arms.ARMS if role in cls.roles and cls.available(env)]


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU {cpu}, {mem:.0f} GiB, Linux {platform.release()}"


def versions(env):
    def first_line(argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    v = {
        "gatehouse": first_line([env.gatehouse, "--version"]),
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "openssl": first_line(["openssl", "version"]),
    }
    if arms.Caddy.available(env):
        v["caddy"] = first_line(["caddy", "version"])
    if arms.H2o.available(env):
        v["h2o"] = first_line(["h2o", "--version"])
    return v


if __name__ == "__main__":
    main()
