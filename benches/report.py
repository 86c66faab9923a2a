"""Writes benches/RESULTS.md and benches/results.json from the samples of one run."""
import json
import os
import statistics

import arms

# workload prefix -> (goal as "gatehouse is N x better than the best peer", wording)
GOALS = {
    "H1-full-handshake": (2.0, "full-handshake connections >= 2x"),
    "K1-": (1.1, "keep-alive proxied requests >= 1.1x"),
    "P1-": (1.0, "passthrough >= 1.0x"),
    "B1-passthrough": (1.0, "passthrough >= 1.0x"),
    "B1-terminate": (1.3, "bulk terminate >= 1.3x"),
    "M1-": (2.0, "idle memory per connection <= 0.5x"),
    "L1-p99-80pct": (1.0, "p99 at 80 % load <= the peers'"),
}

PEERS = arms.PEERS
REFERENCES = arms.REFERENCES
TITLES = {"gatehouse": "gatehouse", "nginx": "nginx", "haproxy": "HAProxy", "caddy": "Caddy", "h2o": "h2o",
          "floor-pingora": "floor: Pingora", "floor-hyper": "floor: hyper"}


def goal(name):
    for prefix, g in GOALS.items():
        if name.startswith(prefix):
            return g
    return None


def med(samples):
    return statistics.median(s["value"] for s in samples)


def spread(samples):
    v = [s["value"] for s in samples]
    return min(v), max(v)


def summarize(results):
    """One row per workload that gatehouse and at least one peer ran; the advantage is against
    the best of the peers that can play its role (the floors are references, not peers)."""
    rows = []
    for name, by_arm in results.items():
        peers_here = [p for p in PEERS if p in by_arm]
        if "gatehouse" not in by_arm or not peers_here:
            continue
        ran = [a for a in ("gatehouse",) + PEERS + REFERENCES if a in by_arm]
        unit = by_arm["gatehouse"][0]["unit"]
        g = med(by_arm["gatehouse"])
        value = {a: med(by_arm[a]) for a in ran}
        best_peer = min(peers_here, key=value.get)  # every metric here is lower-is-better
        advantage = value[best_peer] / g if g > 0 else float("inf")
        measured = ["gatehouse"] + peers_here
        busy_all = all(all(s.get("busy") is not None and s["busy"] >= 0.9 for s in by_arm[a]) for a in measured)
        rates = {a: statistics.median(s["rate"] for s in by_arm[a]) for a in ran if by_arm[a][0].get("rate") is not None}
        rows.append({
            "name": name, "metric": unit, "value": value, "ran": ran, "peers": peers_here, "best_peer": best_peer,
            "advantage": advantage, "goal": goal(name), "busy_all": busy_all, "rates": rates,
            "spread": {a: spread(by_arm[a]) for a in ran},
            "errors": {a: sum(s["errors"] for s in by_arm[a]) for a in ran},
            "extra": {a: by_arm[a] for a in ran} if name.startswith("L1") else None,
        })
    return rows


def write(out_dir, meta, results, env):
    rows = summarize(results)
    js = {
        "machine": meta["machine"], "date": meta["date"], "command": meta["command"],
        "workloads": [{
            "name": r["name"], "metric": r["metric"], "lower_is_better": True,
            **{a: round(v, 3) for a, v in r["value"].items()},
            "best_peer": r["best_peer"], "advantage_vs_best_peer": round(r["advantage"], 3),
        } for r in rows],
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(js, f, indent=2)
        f.write("\n")
    md = [
        "# Benchmark results",
        "",
        f"Made by `{meta['command']}` on {meta['date']}" + (" (**quick smoke run: not a record**)" if meta["quick"] else "") + ".",
        "",
        f"Machine: {meta['machine']}. Proxy under test pinned to CPU{env.cpu_proxy} with one worker; load",
        f"generator (wrk, oha, the asyncio idle client) and the origin (nginx) pinned to CPU{env.cpu_load}.",
        "TLS 1.3, X25519, AES-128-GCM, one ECDSA P-256 leaf + CA for every arm; access logs off.",
        f"{meta['rounds']} round(s) per workload, arms interleaved (gatehouse, nginx, HAProxy, ..., gatehouse, ...), each run",
        "after a discarded warm-up run, each proxy freshly started. Figures are medians; spread is min-max.",
        "Caddy and h2o (Debian's builds have no layer-4 proxy) play the `http` role only; `—` where an arm",
        "cannot play a workload's role. The advantage is against the best peer that played the row.",
        "",
        "Versions: " + "; ".join(f"{k} `{v}`" for k, v in meta["versions"].items()) + ".",
        "",
        "**Advantage** = best peer / gatehouse for these lower-is-better metrics: above 1 gatehouse",
        "wins by that factor, below 1 it loses. The primary figure is the proxy's own CPU time per",
        "operation (`/proc/<pid>/stat`), which stays meaningful when the single load core, not the",
        "proxy, is the bottleneck; throughput is compared only where every arm kept the proxy ≥ 90 % busy.",
        "",
        "## Summary",
        "",
        "| workload | metric | " + " | ".join(TITLES[a] for a in ("gatehouse",) + PEERS) + " | advantage | goal | met |",
        "| --- | --- | " + " | ".join("---:" for _ in ("gatehouse",) + PEERS) + " | ---: | --- | :---: |",
    ]
    cell = lambda r, a: f"{r['value'][a]:.2f}" if a in r["value"] else "—"
    for r in rows:
        g = r["goal"]
        met = "" if g is None else ("yes" if r["advantage"] >= g[0] else "**no**")
        md.append(f"| {r['name']} | {r['metric']} | " + " | ".join(cell(r, a) for a in ("gatehouse",) + PEERS) +
                  f" | {r['advantage']:.2f}× | {g[1] if g else ''} | {met} |")
    floors = [r for r in rows if any(a in r["value"] for a in REFERENCES)]
    if floors:
        md += ["", "## The HTTP request path's floor", "",
               "The same TLS termination (tokio-rustls, aws-lc-rs, one current-thread runtime) with no gateway",
               "work after it (`benches/tools/src/http_floor.rs`): Pingora with one fixed peer and no hooks, on",
               "gatehouse's own transport; hyper with one upstream connection bound to each client connection",
               "(HTTP/1.1, or h2 on both sides in the h2 rows). gatehouse serves requests on hyper: what it pays",
               "above `floor: hyper` is its own; what a floor pays above the best peer is that library's.", "",
               "| workload | metric | gatehouse | " + " | ".join(TITLES[a] for a in REFERENCES) + " | best peer |",
               "| --- | --- | ---: | " + " | ".join("---:" for _ in REFERENCES) + " | ---: |"]
        for r in floors:
            md.append(f"| {r['name']} | {r['metric']} | {cell(r, 'gatehouse')} | " + " | ".join(cell(r, a) for a in REFERENCES) +
                      f" | {r['value'][r['best_peer']]:.2f} ({TITLES[r['best_peer']]}) |")
    pq = {n: med(by_arm["gatehouse"]) for n, by_arm in results.items() if n.startswith("H3-") and "gatehouse" in by_arm}
    if pq:
        base = pq.get("H3-pq-x25519")
        md += ["", "## Post-quantum key exchange (gatehouse only)", "",
               "Full TLS 1.3 handshakes from `benches/tools/src/tls_load.rs` (rustls, one group offered, no",
               "resumption, one `GET /0` with `Connection: close` each, 32 at a time). X25519MLKEM768 is what",
               "Chromium offers; the peers' OpenSSL 3.0 cannot negotiate it.", "",
               "| workload | cpu_us_per_conn | vs X25519 |", "| --- | ---: | ---: |"]
        for n, v in pq.items():
            md.append(f"| {n} | {v:.2f} | {v / base:.2f}× |" if base else f"| {n} | {v:.2f} | |")
    md += ["", "## Details", ""]
    for r in rows:
        md.append(f"### {r['name']}")
        md.append("")
        md.append(f"| arm | {r['metric']} (median) | spread | rate | errors |")
        md.append("| --- | ---: | --- | ---: | ---: |")
        for a in r["ran"]:
            lo, hi = r["spread"][a]
            rate = r["rates"].get(a)
            rate_s = "" if rate is None else f"{rate:,.1f}/s"
            md.append(f"| {TITLES[a]} | {r['value'][a]:.2f} | {lo:.2f}–{hi:.2f} | {rate_s} | {r['errors'][a]} |")
        if r["extra"]:
            md.append("")
            md.append("p50 / p99 / p99.9 (ms, medians over rounds); the load CPU's idle share and the wake-up")
            md.append("IPIs the proxy's CPU received per request (what the tail follows: benches/LOAD-CPU.md):")
            for a, samples in r["extra"].items():
                p50 = statistics.median(s["p50"] for s in samples)
                p999 = statistics.median(s["p999"] for s in samples)
                load = ""
                if all("load_idle" in s for s in samples):
                    idle = statistics.median(s["load_idle"] for s in samples)
                    ipis = statistics.median(s["wake_ipis"] for s in samples)
                    load = f"; load CPU idle {idle:.1%}, {ipis:.3f} IPIs/req"
                md.append(f"- {a}: {p50:.3f} / {r['value'][a]:.3f} / {p999:.3f}{load}")
        if r["busy_all"] and r["rates"]:
            g = r["rates"]["gatehouse"]
            best = max(r["rates"][p] for p in r["peers"] if p in r["rates"])
            md.append("")
            md.append(f"Every arm kept the proxy ≥ 90 % busy: throughput ratio gatehouse / best peer = {g / best:.2f}×.")
        md.append("")
    md += ["## Peer configurations", ""]
    for cls in arms.ARMS:
        a = cls(env)
        for role in cls.roles:
            md += [f"### {a.name}, {role} (resumption on; off removes tickets and caches)", "", "```", a.config(role, True).strip(), "```", ""]
    md += ["Origin (nginx on the load CPU):", "", "```", "location = /0 { return 200 \"\"; }  # plus static /f/1k, /f/1m, /f/100m; HTTP :18080, HTTPS :18443", "```", ""]
    path = os.path.join(out_dir, "RESULTS.md")
    # The soak's record (`soak.py --record`, from its marker to the end, with what was written
    # under it) is not this run's: kept.
    soak = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        start = old.find("<!-- soak -->")
        if start >= 0:
            soak = "\n" + old[start:]
    with open(path, "w") as f:
        f.write("\n".join(md) + soak)
    print("\n".join(md[:len(rows) + 45]))
