#!/usr/bin/env python3
"""The attackers of benches/robustness.sh. Each runs until SIGTERM (or --seconds) and then
prints one line of key=value pairs.

  loris  COUNT connections that each send a startup packet one byte per second; every
         SSL_EVERY-th one sends a whole SSLRequest first and then stalls. A connection the
         proxy closes is counted (with how long it lived and whether a FATAL came first) and
         opened again, so COUNT stay open throughout.
  idle   COUNT SCRAM-authenticated asyncpg connections, held idle; prints `ready` on stderr
         once all are open. At the end one of them runs SELECT 1.
"""

import argparse
import asyncio
import signal
import struct
import sys
import time


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database), ("application_name", "loris")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


SSL_REQUEST = struct.pack("!II", 8, 80877103)


class Loris:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.open = 0
        self.max_open = 0
        self.opened = 0
        self.connect_failed = 0
        self.closed_by_proxy = 0
        self.fatal_seen = 0
        self.lifetimes: list[float] = []
        self.packet = startup_packet(a.user, a.database)
        self.gate = asyncio.Semaphore(a.concurrency)

    async def one(self, i: int, stop: asyncio.Event) -> None:
        ssl_first = self.a.ssl_every > 0 and i % self.a.ssl_every == 0
        while not stop.is_set():
            try:
                async with self.gate:
                    r, w = await asyncio.open_connection("127.0.0.1", self.a.port)
            except OSError:
                self.connect_failed += 1
                await asyncio.sleep(1)
                continue
            self.opened += 1
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            t0 = time.monotonic()
            try:
                await self.drip(r, w, ssl_first, stop)
            finally:
                self.open -= 1
                w.close()
            if not stop.is_set():
                self.lifetimes.append(time.monotonic() - t0)

    async def drip(self, r, w, ssl_first: bool, stop: asyncio.Event) -> None:
        """Sends the packet a byte a second until the proxy closes the connection."""
        data = self.packet
        if ssl_first:
            w.write(SSL_REQUEST)
            data = b""  # after the answer, nothing more: a stalled TLS negotiation
        reader = asyncio.ensure_future(r.read(65536))
        pos = 0
        while not stop.is_set():
            if pos < len(data):
                try:
                    w.write(data[pos : pos + 1])
                except (OSError, RuntimeError):
                    break
                pos += 1
            done, _ = await asyncio.wait({reader}, timeout=1.0)
            if done:
                try:
                    got = reader.result()
                except OSError:
                    got = b""
                if got[:1] == b"E":
                    self.fatal_seen += 1
                if got in (b"N", b"S"):
                    reader = asyncio.ensure_future(r.read(65536))
                    continue
                self.closed_by_proxy += 1
                return
        reader.cancel()

    async def run(self, stop: asyncio.Event) -> str:
        tasks = []
        for i in range(self.a.count):
            tasks.append(asyncio.ensure_future(self.one(i, stop)))
            if i % self.a.concurrency == 0:
                await asyncio.sleep(0.05)
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
        life = sorted(self.lifetimes) or [0.0]
        return (
            f"count={self.a.count} max_open={self.max_open} opened={self.opened} "
            f"closed_by_proxy={self.closed_by_proxy} fatal_before_close={self.fatal_seen} "
            f"connect_failed={self.connect_failed} "
            f"lifetime_s_min={life[0]:.1f} lifetime_s_median={life[len(life) // 2]:.1f} "
            f"lifetime_s_max={life[-1]:.1f}"
        )


async def idle(a: argparse.Namespace, stop: asyncio.Event) -> str:
    import asyncpg

    sem = asyncio.Semaphore(a.concurrency)
    conns = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with sem:
            for _ in range(5):
                try:
                    conns.append(
                        await asyncpg.connect(
                            host="127.0.0.1", port=a.port, user=a.user,
                            password=a.password, database=a.database, ssl=False, timeout=120,
                        )
                    )
                    return
                except (OSError, asyncio.TimeoutError, asyncpg.PostgresError):
                    await asyncio.sleep(0.5)
            failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(a.count)))
    print(f"ready {len(conns)} in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    await stop.wait()
    ok = bool(conns) and await conns[-1].fetchval("SELECT 1") == 1
    await asyncio.gather(*(c.close(timeout=30) for c in conns), return_exceptions=True)
    return f"count={a.count} opened={len(conns)} failed={failed} connect_s={time.monotonic() - t0:.1f} query_ok={ok}"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["loris", "idle"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--ssl-every", type=int, default=4, help="loris: every n-th sends SSLRequest")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: SIGTERM)")
    p.add_argument("--user", default="bench")
    p.add_argument("--password", default="bench-secret")
    p.add_argument("--database", default="bench")
    p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if a.seconds:
        loop.call_later(a.seconds, stop.set)
    line = await (Loris(a).run(stop) if a.mode == "loris" else idle(a, stop))
    print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
