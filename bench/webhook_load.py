"""The load client of the ingest benches (bench/ingest.py, ingest_cpu.py, ingest_scale.py): signed
webhook requests posted by `concurrency` lanes, spread round-robin over one or more kefu ports."""

from __future__ import annotations

import asyncio
import time

import aiohttp


async def drive(
    ports: list[int], reqs: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> tuple[float, list[float]]:
    """Seconds the measured posts took and each one's latency; every post must get a 202."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for port in ports:
            for _ in range(1200):  # a prefilled database takes a while to open and catch up
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        latencies: list[float] = []
        queue = iter(reqs)

        async def lane(n: int) -> None:
            url = f"http://127.0.0.1:{ports[n % len(ports)]}/webhooks/shop"
            for body, headers in queue:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 202:
                        raise SystemExit(f"unexpected {r.status}: {await r.text()}")
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(lane(n) for n in range(concurrency)))
        return time.perf_counter() - started, latencies
