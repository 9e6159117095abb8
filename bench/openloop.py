"""An open-loop load generator: requests at a fixed offered rate, whatever the server's pace.

    python bench/openloop.py URL --rate 1500 --duration 10 [--connections 64]

wrk sends a connection's next request only when the last one is answered, so a slow server is offered less
load and its stalls hide (coordinated omission). Here request i is due at start + i/rate; it goes out on the
first free one of `--connections` keep-alive connections (all opened before the clock starts), and its
latency is counted from when it was due, so waiting for a free connection counts too (as in wrk2). Prints one
JSON object: offered and achieved rate, latency percentiles, errors. The run stops issuing after `duration`
and waits at most `--grace` seconds for outstanding answers; those still missing then count as errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.parse


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(url: str, rate: float, duration: float, connections: int, grace: float) -> dict:
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    due: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    errors = {"status": 0, "connection": 0, "unanswered": 0}
    total = int(rate * duration)

    async def connect():
        return await asyncio.open_connection(parts.hostname, parts.port)

    async def connection(reader, writer) -> None:
        while True:
            at = await due.get()
            if at is None:
                break
            try:
                if writer is None:
                    reader, writer = await connect()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length, chunked = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        chunked = value.strip().lower() == b"chunked"
                if chunked:
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        await reader.readexactly(size + 2)
                    await reader.readuntil(b"\r\n")  # no trailers here
                elif length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - at)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    errors["status"] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                errors["connection"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None

    # Every connection is open before the clock starts: the run measures requests, not connection set-up.
    opened = await asyncio.gather(*(connect() for _ in range(connections)))
    workers = [asyncio.ensure_future(connection(reader, writer)) for reader, writer in opened]
    # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
    start = time.perf_counter()
    for i in range(total):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due.put_nowait(at)
    for _ in workers:
        due.put_nowait(None)
    left = max(0.0, duration + grace - (time.perf_counter() - start))
    _, pending = await asyncio.wait(workers, timeout=left)
    for task in pending:
        task.cancel()
    elapsed = time.perf_counter() - start
    errors["unanswered"] = total - len(latencies) - errors["connection"]
    ordered = sorted(latencies)
    return {
        "offered_rps": rate,
        "achieved_rps": len(latencies) / elapsed,
        "requests": total,
        "answered": len(latencies),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "p999": percentile(ordered, 0.999),
        "max": ordered[-1] if ordered else float("nan"),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args()
    run = asyncio.run
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        pass
    result = run(drive(args.url, args.rate, args.duration, args.connections, args.grace))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
