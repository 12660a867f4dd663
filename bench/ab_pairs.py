#!/usr/bin/env python3
"""Per-round ratios B/A from bench/ab-interleaved.sh output, and their medians.

    python3 bench/ab_pairs.py ab.txt A B

Each round's B is divided by the same round's A (requests/s, CPU µs per
request in total, user and system, p99), so a slow minute of the host
cancels out; the medians of those ratios are printed with each system's own
medians.
"""
import statistics as st
import sys


def p99_ms(v):
    if v.endswith("ms"):
        return float(v[:-2])
    if v.endswith("us"):
        return float(v[:-2]) / 1000
    return float(v.rstrip("s")) * 1000


def main():
    path, a, b = sys.argv[1:4]
    rows = []
    for line in open(path):
        parts = line.split()
        if not parts:
            continue
        kv = dict(x.split("=", 1) for x in parts[1:])
        rows.append((parts[0], kv))
    per = {a: [], b: []}
    pairs, cur = [], {}
    for name, kv in rows:
        if name in per:
            per[name].append(kv)
            cur[name] = kv
        if a in cur and b in cur:
            pairs.append(
                {
                    k: (p99_ms(cur[b][k]) / p99_ms(cur[a][k]) if k == "p99" else float(cur[b][k]) / float(cur[a][k]))
                    for k in ("rps", "total", "user", "sys", "p99")
                }
            )
            cur = {}
    for name, kvs in per.items():
        med = {k: st.median(float(x[k]) for x in kvs) for k in ("rps", "total", "user", "sys")}
        print(
            f"{name}: {len(kvs)} runs, rps {med['rps']:.0f}, µs/req {med['total']:.2f} "
            f"(user {med['user']:.2f} + sys {med['sys']:.2f}), p99 {st.median(p99_ms(x['p99']) for x in kvs):.2f} ms"
        )
    m = {k: st.median(p[k] for p in pairs) for k in ("rps", "total", "user", "sys", "p99")}
    print(
        f"{b}/{a} per round, median of {len(pairs)}: rps {m['rps']:.3f}x, CPU/req {m['total']:.3f}x "
        f"(user {m['user']:.3f}x, sys {m['sys']:.3f}x), p99 {m['p99']:.3f}x"
    )


if __name__ == "__main__":
    main()
