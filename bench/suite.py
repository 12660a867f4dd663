#!/usr/bin/env python3
"""Table and plot for bench/suite.sh: reads its runs.tsv (one row per run),
prints one Markdown table (medians, min-max, ratios to HAProxy in the same
run) and writes it to --table; draws requests/s and p99 per system and case
to --plot (matplotlib, Debian's python3-matplotlib).

Usage: suite.py runs.tsv [--notes notes.txt] [--table table.md] [--plot plot.png]
"""

import argparse
import csv
import re
import statistics
import sys

# A case that is another case plus one change: its rows also note the
# system's rps as a fraction of its rps in the base case (same run).
BASE_CASE = {"h1-100B-pp": "h1-100B"}

# Display order.
SYSTEM_ORDER = ["haproxy", "haproxy-reuse-always", "haproxy-tcp", "nginx", "tandem-node", "tandem-director",
                "tandem-node-wt1", "tandem-node-wt2", "tandem-node-wt4",
                "tandem-node-r10", "tandem-node-r1000"]
CASE_ORDER = ["h1-100B", "h1-100B-pp", "h1-16k", "tls-h1-100B", "tls-new-full", "tls-seq-full",
              "tls-seq-resumed", "h2-m10", "idle-tls", "close-100B", "long-1MiB"]
CASE_TITLE = {
    "h1-100B": "HTTP/1.1 keep-alive, 100 B",
    "h1-100B-pp": "HTTP/1.1 keep-alive, 100 B, PROXY v2 to the origin",
    "h1-16k": "HTTP/1.1 keep-alive, 16 KiB",
    "tls-h1-100B": "TLS keep-alive, 100 B",
    "tls-new-full": "new TLS conn per request (full handshake), 50 at a time",
    "tls-seq-full": "openssl s_time -new (full handshakes, 1 at a time)",
    "tls-seq-resumed": "openssl s_time -reuse (resumed, 1 at a time)",
    "h2-m10": "h2 over TLS, 10 streams per connection",
    "idle-tls": "idle TLS connections (memory)",
    "close-100B": "new TCP conn per request (Connection: close)",
    "long-1MiB": "keep-alive 1 MiB responses (long transfer)",
}


def reference(system):
    """The HAProxy row a system is compared with (same case, same run)."""
    if system in ("haproxy", "haproxy-tcp"):
        return None
    if system == "tandem-director":
        return "haproxy-tcp"
    return "haproxy"


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def stats(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt(s, digits=0, spread=True):
    if s is None:
        return "–"
    med, lo, hi = s
    f = f"{{:,.{digits}f}}"
    if spread and hi > lo:
        return f"{f.format(med)} ({f.format(lo)}–{f.format(hi)})"
    return f.format(med)


def ratio(a, b, lower_is_better=False):
    if a is None or b is None or b[0] == 0:
        return "–"
    return f"{a[0] / b[0]:.2f}×"


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def aggregate(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["system"], r["case"]), []).append(r)
    agg = {}
    for key, rs in groups.items():
        agg[key] = {
            "n": len(rs),
            "rps": stats(num(r["rps"]) for r in rs),
            "mbs": stats(num(r["mb_s"]) for r in rs),
            "p50": stats(num(r["p50_ms"]) for r in rs),
            "p99": stats(num(r["p99_ms"]) for r in rs),
            "cpu": stats(num(r["cpu_s_per_100k"]) for r in rs),
            "rss": stats((num(r["rss_kb"]) or 0) / 1024 for r in rs if num(r["rss_kb"])),
            "kbc": stats(num(r["kb_per_conn"]) for r in rs),
            "errors": sum(int(num(r["errors"]) or 0) for r in rs),
            "foreign": max((num(r["foreign_pct"]) or 0 for r in rs), default=0),
            "notes": [r["note"] for r in rs if r.get("note")],
        }
    return agg


def order(keys):
    def k(key):
        s, c = key
        return (CASE_ORDER.index(c) if c in CASE_ORDER else 99,
                SYSTEM_ORDER.index(s) if s in SYSTEM_ORDER else 99, s)
    return sorted(keys, key=k)


def table(agg):
    out = ["| case | system | runs | requests/s median (min–max) | MB/s | p50 ms | p99 ms "
           "| CPU-s / 100k req | RSS MiB | KiB / idle conn | ref | × rps | × CPU/req | × p99 "
           "| × KiB/conn | notes |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for key in order(agg):
        s, c = key
        a = agg[key]
        ref = reference(s)
        b = agg.get((ref, c)) if ref else None
        notes = list(a["notes"])
        resumed = [re.match(r"resumed (\d+) of (\d+)$", n) for n in notes]
        if notes and all(resumed):
            got = sum(int(m.group(1)) for m in resumed)
            total = sum(int(m.group(2)) for m in resumed)
            notes = [f"server resumed {got:,} of {total:,} connections"]
        base = None
        if c in BASE_CASE:
            # haproxy-reuse-always is haproxy with another backend setting
            base = agg.get((s, BASE_CASE[c])) or (
                agg.get(("haproxy", BASE_CASE[c])) if s.startswith("haproxy-reuse") else None)
        if base and a["rps"] and base["rps"] and base["rps"][0]:
            notes.append(f"{a['rps'][0] / base['rps'][0]:.2f}× its {BASE_CASE[c]} rps")
        if a["errors"] and c != "idle-tls":
            notes.append(f"{a['errors']} errors")
        if a["foreign"] > 10:
            notes.append(f"other load on the SUT core up to {a['foreign']:.0f} %")
        show_mbs = c in ("long-1MiB", "h1-16k")
        out.append("| " + " | ".join([
            c, s, str(a["n"]),
            fmt(a["rps"]),
            fmt(a["mbs"], 1, spread=False) if show_mbs else "",
            fmt(a["p50"], 2, spread=False),
            fmt(a["p99"], 2),
            fmt(a["cpu"], 3),
            fmt(a["rss"], 1, spread=False),
            fmt(a["kbc"], 1, spread=False),
            (ref or "") if b else "",
            ratio(a["rps"], b["rps"]) if b else "",
            ratio(a["cpu"], b["cpu"]) if b else "",
            ratio(a["p99"], b["p99"]) if b else "",
            ratio(a["kbc"], b["kbc"]) if b else "",
            "; ".join(notes),
        ]) + " |")
    return "\n".join(out)


def plot(agg, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = [k for k in order(agg) if agg[k]["rps"] is not None]
    if not keys:
        return
    labels = [f"{CASE_TITLE.get(c, c)} — {s}" for s, c in keys]
    systems = [s for s in SYSTEM_ORDER if any(k[0] == s for k in keys)]
    systems += sorted({k[0] for k in keys} - set(systems))
    palette = plt.get_cmap("tab10")
    color = {s: palette(i % 10) for i, s in enumerate(systems)}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.32 * len(keys) + 1.6), sharey=True)
    y = list(range(len(keys)))[::-1]
    for ax, metric, title in ((ax1, "rps", "requests/s (connections/s for TLS handshakes), log scale"),
                              (ax2, "p99", "p99 latency, ms (h2: from h2load's log), log scale")):
        vals, errs_lo, errs_hi, ys, cols = [], [], [], [], []
        for yi, key in zip(y, keys):
            st = agg[key][metric]
            if st is None:
                continue
            med, lo, hi = st
            vals.append(med); errs_lo.append(med - lo); errs_hi.append(hi - med)
            ys.append(yi); cols.append(color[key[0]])
        ax.barh(ys, vals, xerr=[errs_lo, errs_hi], color=cols, capsize=2, height=0.75)
        for yi, v in zip(ys, vals):
            ax.text(v, yi, f" {v:,.0f}" if metric == "rps" else f" {v:.2f}", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,g}"))
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", which="both", alpha=0.3)
    ax1.set_yticks(y)
    ax1.set_yticklabels(labels, fontsize=8)
    # Separate the cases.
    prev = None
    for yi, key in zip(y, keys):
        if prev is not None and key[1] != prev:
            for ax in (ax1, ax2):
                ax.axhline(yi + 0.5, color="grey", lw=0.6)
        prev = key[1]
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[s]) for s in systems]
    fig.legend(handles, systems, loc="lower center", ncol=min(len(systems), 6), fontsize=8)
    fig.suptitle("Tandem benchmark suite (medians, bars = min–max; SUT on CPU 0, load + origin on CPU 1)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tsv")
    ap.add_argument("--notes")
    ap.add_argument("--table")
    ap.add_argument("--plot")
    a = ap.parse_args()
    agg = aggregate(load(a.tsv))
    parts = []
    if a.notes:
        with open(a.notes) as f:
            parts.append("```\n" + f.read().rstrip() + "\n```\n")
    parts.append(table(agg))
    parts.append(
        "\nMedians of the runs (min–max in brackets). Ratios are medians of the system over the "
        "median of its reference row in the same run (`ref`): HAProxy `mode http` for the node "
        "and nginx, HAProxy `mode tcp` + send-proxy-v2 for the director. CPU-s / 100k req = "
        "utime+stime of the system's process tree from /proc ÷ requests × 100,000 (= µs per "
        "request ÷ 10); for handshake rows, per connection. RSS = the tree's VmRSS after the run. "
        "KiB / idle conn = RSS growth ÷ connections still established at the sample.")
    if any(c == "h1-100B-pp" for _, c in agg):
        parts.append(
            "\nh1-100B-pp: the proxy sends PROXY v2 to the origin's `proxy_protocol` listener, so "
            "an upstream connection carries one client: HAProxy 2.6 reuses a server connection only "
            "for the same PROXY block (client address and port), the node binds one upstream "
            "connection to each client connection. `haproxy` runs this case with `http-reuse never` "
            "(nothing reusable is lost, see bench/conf/haproxy.cfg); `haproxy-reuse-always` is the "
            "same with `http-reuse always`, where 2.6 keeps the dead idle connections of closed "
            "client connections and then opens a new server connection for almost every request "
            "(../shared/bench/BASELINE.md's 0.24× anchor). "
            "The tandem-node rows come from a second node instance whose only cluster has "
            "`proxy_protocol = \"v2\"`, so the other cases keep their config. nginx has no row: its "
            "http proxy cannot send the PROXY protocol (`proxy_protocol on` is stream-module only).")
    text = "\n".join(parts) + "\n"
    print(text)
    if a.table:
        with open(a.table, "w") as f:
            f.write(text)
    if a.plot:
        plot(agg, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
