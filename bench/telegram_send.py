"""Outbound throughput to Telegram: N messages to M chats through kefu's real outbox worker and
Telegram channel (python-telegram-bot over HTTP) into the Bot API stand-in, which enforces the flood
limit and answers 429 when it is broken.

Prints the achieved rate as a share of the limit (target >= 95%) and the number of 429s (target 0).

    .venv/bin/python bench/telegram_send.py               # 3,000 to 300 chats at 30/s: ~100 s
    .venv/bin/python bench/telegram_send.py --rate 150    # same shape, 5x the limit: ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from bot import outbox
from bot.config import OutboxConfig
from bot.intents import Outbound, Reply
from bot.outbox import OutboxWorker
from channels.telegram import TelegramChannel, make_bot
from storage.db import Database
from storage.models import OutboxRow
from tests.servers.botapi import TOKEN, BotApiServer


async def run(messages: int, chats: int, rate: float, latency: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await db.upgrade()
        async with db.transaction() as session:
            for n in range(messages):
                chat = 100_000 + n % chats  # round-robin, as replies to many customers arrive
                await outbox.enqueue(session, Outbound(
                    "telegram", str(chat), Reply(text=f"reply {n} to {chat}"), f"bench-{n}"))
        async with BotApiServer(rate_per_second=rate, latency=latency) as botapi:
            channel = TelegramChannel(make_bot(TOKEN, botapi.base_url), mode="webhook",
                                      messages_per_second=rate)
            worker = OutboxWorker(db, {"telegram": channel},
                                  OutboxConfig(poll_interval_seconds=0.05, batch_size=200))
            async with channel.bot:
                started = time.monotonic()
                task = asyncio.create_task(worker.run())
                while True:
                    async with db.sessions() as session:
                        left = await session.scalar(select(func.count()).select_from(OutboxRow)
                                                    .where(OutboxRow.status != "sent"))
                    if not left:
                        break
                    await asyncio.sleep(0.2)
                elapsed = time.monotonic() - started
                worker.stop()
                await task
            first, last = botapi.sent[0].at, botapi.sent[-1].at
            # A perfect sender fits `rate` sends in each second: n sends take (n - 1) / rate
            # seconds.
            ideal = (len(botapi.sent) - 1) / rate
            share = ideal / (last - first) if last > first else 0.0
            print(f"messages          {messages} to {chats} chats")
            print(f"limit             {rate:g}/s (stand-in enforces it over any 1 s window)")
            print(
                f"delivered         {len(botapi.sent)} (distinct chats "
                f"{len({s.chat_id for s in botapi.sent})})"
            )
            print(f"first -> last     {last - first:.2f} s   (ideal {ideal:.2f} s)")
            print(f"achieved rate     {(len(botapi.sent) - 1) / (last - first):.2f}/s")
            print(f"share of limit    {share:.1%}   (target >= 95%)")
            print(f"429 answers       {botapi.too_many}   (target 0)")
            print(f"wall time         {elapsed:.2f} s including claim and record")
        await db.dispose()
        return 0 if share >= 0.95 and botapi.too_many == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--chats", type=int, default=300)
    parser.add_argument(
        "--rate",
        type=float,
        default=30.0,
        help="messages per second, both the stand-in's limit and kefu's (default 30)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.02,
        help="seconds the stand-in takes per request, like a real network (default 0.02)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(run(args.messages, args.chats, args.rate, args.latency)))


if __name__ == "__main__":
    main()
