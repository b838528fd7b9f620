#!/usr/bin/env python3
"""Rewrites the tables between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`
in BENCHMARKS.md from the JSON that scripts/benchmarks.sh keeps.

usage: render_benchmarks.py RESULTS_DIR BENCHMARKS.md
"""
import json
import os
import re
import sys


def load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def ms(v, d=3):
    return "n/a" if v is None else f"{v:.{d}f}"


def added(v):
    return "n/a" if v is None else f"{v:+.3f}"


def ratio(v):
    return "n/a" if v is None else f"{v:.2f}"


def overhead(d):
    rows = [
        "| command | direct p50 / p99 | relay added p50 / p99 | router added p50 / p99 "
        "| router ÷ relay added (target ≤ 1.3 / ≤ 2) | requests/s alone: direct / relay / router "
        "(target router ≥ 0.8 × relay) | CPU per routed request: router / NATS / audit |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cmd in [
        ("overhead-c1.json", "--requests 600 --concurrency 1"),
        ("overhead-c64.json", "--requests 1920 --concurrency 64"),
    ]:
        o = load(d, name)
        r = o["router_added_over_relay_added"]
        met = None not in (r["p50"], r["p99"]) and r["p50"] <= 1.3 and r["p99"] <= 2.0
        rps = o["requests_per_s"]
        rr = o["router_rps_over_relay_rps"]
        cpu = [o.get(k) for k in ("router_cpu_us_per_request", "nats_cpu_us_per_request",
                                   "audit_cpu_us_per_request")]
        rows.append(
            f"| `{cmd}` | {ms(o['direct_ms']['p50'])} / {ms(o['direct_ms']['p99'])} ms "
            f"| {added(o['relay_added_ms']['p50'])} / {added(o['relay_added_ms']['p99'])} ms "
            f"| **{added(o['added_ms']['p50'])} / {added(o['added_ms']['p99'])} ms** "
            f"| **{ratio(r['p50'])} / {ratio(r['p99'])}** ({'met' if met else 'not met'}) "
            f"| {rps['direct']:,.0f} / {rps['relay']:,.0f} / {rps['router']:,.0f} "
            f"({rr:.2f}, {'met' if rr >= 0.8 else 'not met'}) "
            f"| {' / '.join(ms(c, 0) for c in cpu)} µs |"
        )
    return rows


def fairness(d):
    v = load(d, "fairness.json")
    rows = [
        "| scenario | A p50 / p99 TTFT | B p50 / p99 TTFT | B alone p99 "
        "| B p99 ÷ alone (target ≤ 1.5) | A:B delivered (entitled) | Jain | utilisation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in v["scenarios"]:
        a, b = s["flood"], s["quiet"]
        alone = s.get("quiet_alone_ttft_p99_ms")
        victim = s.get("victim_p99_over_solo")
        rows.append(
            f"| {s['scenario']} | {a['ttft_p50_ms']:,.0f} / {a['ttft_p99_ms']:,.0f} ms "
            f"| {b['ttft_p50_ms']:,.0f} / {b['ttft_p99_ms']:,.0f} ms "
            f"| {'–' if alone is None else f'{alone:.1f} ms'} "
            f"| {'–' if victim is None else f'{victim:.2f}'} "
            f"| {s['delivered_ratio']:.2f} ({s['entitled_ratio']:.0f}) "
            f"| {s['jain']:.3f} | {s['utilisation']:.2f} |"
        )
    return rows


def audit(d):
    rows = [
        "| command | pipeline events/s | p50 / p99 publish→durable | floor events/s "
        "| floor p50 / p99 | pipeline ÷ floor | target (50k/s at p99 ≤ 50 ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cmd in [
        ("audit-3072.json", "--events 200000"),
        ("audit-1536.json", "--events 200000 --max-pending 1536"),
    ]:
        a = load(d, name)
        met = a["events_per_second"] >= 50_000 and a["latency_ms_p99"] <= 50
        rows.append(
            f"| `{cmd}` | {a['events_per_second']:,.0f} "
            f"| {a['latency_ms_p50']:.1f} / {a['latency_ms_p99']:.1f} ms "
            f"| {a['floor_events_per_second']:,.0f} "
            f"| {a['floor_latency_ms_p50']:.1f} / {a['floor_latency_ms_p99']:.1f} ms "
            f"| {a['events_per_second_over_floor']:.2f} | {'met' if met else 'not met'} |"
        )
    return rows


def main():
    results, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        text = f.read()
    for name, render in [("overhead", overhead), ("fairness", fairness), ("audit", audit)]:
        pat = re.compile(
            rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not pat.search(text):
            sys.exit(f"{path}: no <!-- bench:{name} --> markers")
        body = "\n".join(render(results)) + "\n"
        text = pat.sub(lambda m: m.group(1) + body + m.group(2), text)
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
