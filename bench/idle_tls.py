#!/usr/bin/env python3
"""Memory per idle TLS connection: opens N TLS connections to HOST:PORT (at
most CONCURRENCY handshakes at a time), sends one keep-alive GET on each and
reads its answer, then leaves them all open and idle. Prints one JSON line:
RSS of the given PIDs (summed, from /proc/PID/status) before and after, how
many connections are still established at the sampling moment (ss), and the
RSS delta per connection. Closes everything on exit. Bounded by --timeout.

Usage: idle_tls.py --port 19301 --count 10000 --pids 123,124 [--path /100]
Standard library only (Python 3.11)."""

import argparse
import asyncio
import json
import resource
import ssl
import subprocess
import sys
import time


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def established(port):
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if line.strip())


async def open_one(host, port, ctx, path, sem, conns, errors):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 10)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            conns.append(writer)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as e:
            errors.append(type(e).__name__)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--pids", required=True, help="comma-separated PIDs of the system under test")
    ap.add_argument("--path", default="/100")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=180.0)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.count + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < a.count + 100:
        print(f"ulimit -n hard limit {hard} too low for {a.count} connections", file=sys.stderr)
        return 2
    pids = [int(p) for p in a.pids.split(",") if p]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    before = rss_kb(pids)
    est_before = established(a.port)
    sem = asyncio.Semaphore(a.concurrency)
    conns, errors = [], []
    t0 = time.monotonic()
    tasks = [asyncio.create_task(open_one(a.host, a.port, ctx, a.path, sem, conns, errors))
             for _ in range(a.count)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), a.timeout)
    except asyncio.TimeoutError:
        errors.append("overall timeout")
    opened_s = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    after = rss_kb(pids)
    est = established(a.port) - est_before
    for w in conns:
        w.transport.abort()
    delta = after - before
    print(json.dumps({
        "requested": a.count, "opened": len(conns), "established_at_sample": est,
        "errors": len(errors), "first_errors": sorted(set(errors))[:5],
        "open_seconds": round(opened_s, 2),
        "rss_before_kb": before, "rss_after_kb": after, "rss_delta_kb": delta,
        "kb_per_conn": round(delta / est, 2) if est > 0 else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
