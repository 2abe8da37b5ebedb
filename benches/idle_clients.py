#!/usr/bin/env python3
"""Opens COUNT authenticated (SCRAM-SHA-256) idle client connections to a proxy with asyncpg,
holds them, and reports the proxy's resident memory before, at a tenth of COUNT, and at
COUNT. Used by benches/idle.sh; prints one line of key=value pairs.

Every connection completes startup and authentication (asyncpg returns only after
ReadyForQuery) and then sends nothing. At the end one of them runs `SELECT 1`, to show the
connections are usable, before all are closed.
"""

import argparse
import asyncio
import time

import asyncpg


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="the proxy's process id")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--user", default="bench")
    p.add_argument("--password", default="bench-secret")
    p.add_argument("--database", default="bench")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--settle", type=float, default=3.0, help="seconds to wait before sampling")
    a = p.parse_args()

    sem = asyncio.Semaphore(a.concurrency)
    conns: list[asyncpg.Connection] = []

    async def one() -> None:
        async with sem:
            last = None
            for _ in range(5):
                try:
                    conns.append(
                        await asyncpg.connect(
                            host="127.0.0.1",
                            port=a.port,
                            user=a.user,
                            password=a.password,
                            database=a.database,
                            ssl=False,
                            timeout=120,
                        )
                    )
                    return
                except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as e:
                    last = e
                    await asyncio.sleep(0.5)
            raise RuntimeError(f"connect failed: {last!r}")

    async def open_until(n: int) -> None:
        await asyncio.gather(*(one() for _ in range(n - len(conns))))

    before = rss_kb(a.pid)
    t0 = time.monotonic()
    tenth = max(1, a.count // 10)
    await open_until(tenth)
    await asyncio.sleep(a.settle)
    at_tenth = rss_kb(a.pid)
    await open_until(a.count)
    connect_s = time.monotonic() - t0 - a.settle
    await asyncio.sleep(a.settle)
    after = rss_kb(a.pid)
    ok = await conns[-1].fetchval("SELECT 1") == 1
    await asyncio.gather(*(c.close(timeout=30) for c in conns))

    avg = (after - before) * 1024 / a.count
    marginal = (after - at_tenth) * 1024 / max(1, a.count - tenth)
    print(
        f"count={a.count} before_kb={before} tenth={tenth} tenth_kb={at_tenth} after_kb={after} "
        f"bytes_per_conn={avg:.0f} marginal_bytes_per_conn={marginal:.0f} "
        f"connect_s={connect_s:.1f} query_ok={ok}"
    )


if __name__ == "__main__":
    asyncio.run(main())
