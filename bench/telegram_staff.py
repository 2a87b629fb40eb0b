"""Staff traffic under load: a real kefu (pipeline, outbox worker, Telegram channel on
python-telegram-bot, polling) against the Bot API stand-in enforcing Telegram's limits — 30
messages/s overall, 20 a minute into the staff group, 1 a second into one private chat.

Customers write 600 messages a minute across 100 conversations (Telegram private chats); ten agents
are on duty, so routing assigns every new conversation to one of them. For every customer message
the bench notes when it first became visible to the team — in the staff group or in an agent's
private chat with the bot — and prints the latency (p50, p99, max; target: max within 2 minutes),
the dead outbox rows (target 0) and the 429 answers (target 0). The baseline printed with it is
what the limits allow: the posts a minute the group and one agent chat could take at most.

    .venv/bin/python bench/telegram_staff.py                 # 5 minutes of load, then the drain
    .venv/bin/python bench/telegram_staff.py --minutes 1     # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from storage import staff
from storage.models import OutboxRow
from tests.servers.botapi import TOKEN, BotApiServer, Sent, fixture
from tests.servers.kefu import base_config, running_kefu

GROUP = -1001234567890
AGENT_BASE = 2_000_000
CUSTOMER_BASE = 30_000
TOKEN_RE = re.compile(r"Q\d{6}")
TEXTS = ("你好，想问一下营业时间 {t}", "Hello, a question about my account settings {t}",
         "请问可以开发票吗 {t}", "Can I change the delivery address? {t}")


def update(n: int, conversation: int, token: str) -> dict[str, Any]:
    user = CUSTOMER_BASE + conversation
    text = TEXTS[n % len(TEXTS)].format(t=token)
    return fixture("message__private_text", {
        1001: user, 1365: 10_000 + n, "你好，我的订单还没到": text, "张三": f"客户{conversation}",
        "zhangsan": f"customer{conversation}",
        # Sent now: the stored update's date is long past, and SLA escalations would follow.
        1763890000: int(time.time())})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(
    minutes: float, per_minute: int, conversations: int, agents: int, drain: float
) -> int:
    pushed: dict[str, float] = {}
    seen: dict[str, float] = {}
    where: Counter[str] = Counter()

    def on_send(sent: Sent) -> None:
        if sent.chat_id != GROUP and not AGENT_BASE <= sent.chat_id < AGENT_BASE + agents:
            return
        where["group posts" if sent.chat_id == GROUP else "agent posts"] += 1
        for token in TOKEN_RE.findall(sent.text or ""):
            seen.setdefault(token, sent.at)

    with tempfile.TemporaryDirectory() as tmp:
        async with BotApiServer(forum_chats={GROUP}, rate_per_second=30, group_per_minute=20,
                                chat_per_second=1, latency=0.02) as botapi:
            botapi.on_send = on_send
            cfg = base_config(
                f"sqlite+aiosqlite:///{tmp}/kefu.db",
                telegram={"enabled": True, "base_url": botapi.base_url, "staff_chat_id": GROUP,
                          "poll_timeout_seconds": 1},
            )
            cfg["outbox"] = {"poll_interval_seconds": 0.2}
            async with running_kefu(cfg, {"KEFU_TELEGRAM_TOKEN": TOKEN}) as kefu:
                async with kefu.db.transaction() as session:
                    for a in range(agents):
                        await staff.add(session, f"agent{a}", telegram_user_id=AGENT_BASE + a)
                total = int(minutes * per_minute)
                interval = 60.0 / per_minute
                started = time.monotonic()
                for n in range(total):
                    delay = started + n * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    token = f"Q{n:06d}"
                    pushed[token] = time.monotonic()
                    botapi.push(update(n, n % conversations, token))
                load_end = time.monotonic()
                deadline = load_end + drain
                # Polled, not awaited: `seen` fills from the stand-in's send hook.
                while len(seen.keys() & pushed.keys()) < total and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                async with kefu.db.sessions() as session:
                    statuses = dict((await session.execute(
                        select(OutboxRow.status, func.count()).group_by(OutboxRow.status))).all())
    latencies = [seen[t] - pushed[t] for t in pushed if t in seen]
    missing = len(pushed) - len(latencies)
    dead = statuses.get("dead", 0)
    print(f"load              {per_minute} messages/min across {conversations} conversations "
          f"for {minutes:g} min = {len(pushed)} messages; {agents} agents on duty")
    print("limits            30/s overall, 20/min into the staff group, 1/s per private chat")
    share = f"{per_minute / agents:.0f} messages/min arrive per agent" if agents else "no agents"
    print(f"baseline          group <= 20 posts/min; one agent chat <= 60 posts/min; {share}")
    posts = where["agent posts"] + where["group posts"]
    print(f"posts             group {where['group posts']}, agent chats {where['agent posts']} "
          f"({len(pushed) / max(1, posts):.1f} messages per post)")
    if latencies:
        print(f"visible latency   p50 {statistics.median(latencies):.1f} s, "
              f"p99 {percentile(latencies, 0.99):.1f} s, max {max(latencies):.1f} s"
              "   (target max <= 120 s)")
    print(f"not visible       {missing}   (target 0)")
    print(f"dead rows         {dead}   (target 0)")
    print(f"429 answers       {botapi.too_many}   (target 0)")
    print(f"outbox at end     {statuses}")
    ok = missing == 0 and dead == 0 and botapi.too_many == 0 and latencies and max(latencies) <= 120
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="minutes of inbound load (default 5)")
    parser.add_argument("--rate", type=int, default=600,
                        help="inbound messages a minute (default 600)")
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--drain", type=float, default=150.0,
                        help="seconds to wait after the load for the last messages (default 150)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(run(args.minutes, args.rate, args.conversations, args.agents, args.drain)))


if __name__ == "__main__":
    main()
