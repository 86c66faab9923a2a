#!/usr/bin/env python3
"""Times the admin API's app creation as the stored apps grow (benches/SCALE.md).

Starts `gatehouse run` on the development defaults (embedded store, admin API on
127.0.0.1:8001 without a token) in a fresh state directory, creates apps one by one through
`POST /v1/apps`, and prints the median time of a create at each step. Usage:

    python3 benches/api_scale.py [--gatehouse target/release/gatehouse] [--apps 5000] [--step 1000]
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def post(conn, i):
    body = json.dumps({"id": f"app{i}", "default_port": 8080,
                       "instances": [{"address": f"10.0.{i // 250 % 250}.{i % 250 + 1}"}]})
    started = time.perf_counter()
    conn.request("POST", "/v1/apps", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = resp.read()
    took = time.perf_counter() - started
    if resp.status != 201:
        sys.exit(f"app{i}: {resp.status} {answer[:200]!r}")
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gatehouse", default=os.path.join(ROOT, "target/release/gatehouse"))
    ap.add_argument("--apps", type=int, default=5000, help="apps created in all")
    ap.add_argument("--step", type=int, default=1000, help="a median printed every this many")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="gatehouse-api-scale-")
    proc = subprocess.Popen([args.gatehouse, "run", "--state-dir", state],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", 8001, timeout=30)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    break
                time.sleep(0.05)
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("the gateway did not start")
        conn = http.client.HTTPConnection("127.0.0.1", 8001, timeout=60)
        times = []
        print(f"{'stored apps':>12} {'median ms per create':>22} {'max ms':>8}", flush=True)
        for i in range(args.apps):
            times.append(post(conn, i))
            if (i + 1) % args.step == 0:
                last = times[-args.step:]
                print(f"{i + 1:>12} {statistics.median(last) * 1e3:>22.2f} {max(last) * 1e3:>8.2f}", flush=True)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
