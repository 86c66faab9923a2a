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

PEERS = ("nginx", "haproxy")


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
    rows = []
    for name, by_arm in results.items():
        if not all(a in by_arm for a in ("gatehouse",) + PEERS):
            continue
        unit = by_arm["gatehouse"][0]["unit"]
        g = med(by_arm["gatehouse"])
        peers = {p: med(by_arm[p]) for p in PEERS}
        best_peer = min(peers, key=peers.get)  # every metric here is lower-is-better
        advantage = peers[best_peer] / g if g > 0 else float("inf")
        busy_all = all(
            all(s.get("busy") is not None and s["busy"] >= 0.9 for s in by_arm[a]) for a in ("gatehouse",) + PEERS
        )
        rates = {a: statistics.median(s["rate"] for s in by_arm[a]) for a in ("gatehouse",) + PEERS if by_arm[a][0].get("rate") is not None}
        rows.append({
            "name": name, "metric": unit, "gatehouse": g, **peers, "best_peer": best_peer,
            "advantage": advantage, "goal": goal(name), "busy_all": busy_all, "rates": rates,
            "spread": {a: spread(by_arm[a]) for a in ("gatehouse",) + PEERS},
            "errors": {a: sum(s["errors"] for s in by_arm[a]) for a in ("gatehouse",) + PEERS},
            "extra": {a: by_arm[a] for a in ("gatehouse",) + PEERS} if name.startswith("L1") else None,
        })
    return rows


def write(out_dir, meta, results, env):
    rows = summarize(results)
    js = {
        "machine": meta["machine"], "date": meta["date"], "command": meta["command"],
        "workloads": [{
            "name": r["name"], "metric": r["metric"], "lower_is_better": True,
            "gatehouse": round(r["gatehouse"], 3), "nginx": round(r["nginx"], 3), "haproxy": round(r["haproxy"], 3),
            "advantage_vs_best_peer": round(r["advantage"], 3),
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
        f"{meta['rounds']} round(s) per workload, arms interleaved (gatehouse, nginx, HAProxy, gatehouse, ...), each run",
        "after a discarded warm-up run, each proxy freshly started. Figures are medians; spread is min-max.",
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
        "| workload | metric | gatehouse | nginx | HAProxy | advantage | goal | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | :---: |",
    ]
    for r in rows:
        g = r["goal"]
        met = "" if g is None else ("yes" if r["advantage"] >= g[0] else "**no**")
        md.append(f"| {r['name']} | {r['metric']} | {r['gatehouse']:.2f} | {r['nginx']:.2f} | {r['haproxy']:.2f} | "
                  f"{r['advantage']:.2f}× | {g[1] if g else ''} | {met} |")
    md += ["", "## Details", ""]
    for r in rows:
        md.append(f"### {r['name']}")
        md.append("")
        md.append(f"| arm | {r['metric']} (median) | spread | rate | errors |")
        md.append("| --- | ---: | --- | ---: | ---: |")
        for a in ("gatehouse",) + PEERS:
            lo, hi = r["spread"][a]
            rate = r["rates"].get(a)
            rate_s = "" if rate is None else f"{rate:,.1f}/s"
            md.append(f"| {a} | {r[a]:.2f} | {lo:.2f}–{hi:.2f} | {rate_s} | {r['errors'][a]} |")
        if r["extra"]:
            md.append("")
            md.append("p50 / p99 / p99.9 (ms, medians over rounds):")
            for a, samples in r["extra"].items():
                p50 = statistics.median(s["p50"] for s in samples)
                p999 = statistics.median(s["p999"] for s in samples)
                md.append(f"- {a}: {p50:.3f} / {r[a]:.3f} / {p999:.3f}")
        if r["busy_all"] and r["rates"]:
            g = r["rates"]["gatehouse"]
            best = max(r["rates"][p] for p in PEERS)
            md.append("")
            md.append(f"Every arm kept the proxy ≥ 90 % busy: throughput ratio gatehouse / best peer = {g / best:.2f}×.")
        md.append("")
    md += ["## Peer configurations", ""]
    for cls in arms.ARMS:
        a = cls(env)
        for role in ("terminate", "passthrough", "http"):
            md += [f"### {a.name}, {role} (resumption on; off removes tickets and caches)", "", "```", a.config(role, True).strip(), "```", ""]
    md += ["Origin (nginx on the load CPU):", "", "```", "location = /0 { return 200 \"\"; }  # plus static /f/1k, /f/1m, /f/100m; HTTP :18080, HTTPS :18443", "```", ""]
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md[:len(rows) + 25]))
