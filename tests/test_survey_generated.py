"""Generated survey replies through the real pipeline (#12), on SQLite and PostgreSQL: hundreds of
customers each get a resolve (a survey), then, right after it, after they reopened with "thanks!",
or after an agent's question, one reply on Telegram, the webhook or email (a real MIME message,
quoted history and all). A reply that is a bare score answers, unless an agent wrote since the
survey; anything else reopens the conversation, is logged as the customer speaking and reaches the
staff group. Hypothesis generates the cases; every one is sent (no shrinking)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bot.messages import Inbound
from channels.email import MailStore, to_inbound
from channels.mail_auth import AuthSettings
from handlers import agents, lifecycle, staff_group
from handlers.roles import SYSTEM
from storage import staff
from storage.db import Database
from storage.models import Conversation, Interaction, OutboxRow, Survey
from tests.handlers.care_helpers import STAFF_CHAT, STAFF_ROOM, care_pipeline, config

CASES = {"sqlite": 240, "postgres": 120}
# An hour ago: an agent's answer is stamped with the real clock, after the survey and before the
# reply.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
CFG = config(survey={"ask_after": "0s", "expires_after": "2d"})
AUTH = AuthSettings(authserv_ids=("mx.kefu.test",), verify_dkim=False)

SCORES = [
    ("5", 5), ("1", 1), ("３", 3), ("5分", 5), ("4 分", 4), ("5 stars", 5), ("one star", 1),
    ("⭐⭐", 2), ("★★★★", 4), ("五星", 5), ("二", 2), ("5️⃣", 5), ("4/5", 4), ("3 out of 5", 3),
]
# Around a bare score: nothing a reader sees as words.
PADDING = st.sampled_from(["", " ", "  ", "\n", "\u3000", "\u200b", "\u200f", "\ufeff", "\r\n"])
CLOSING = st.sampled_from(["", "!", "!!", ".", "。", "！", "~", " !", "\n\n"])
# After a score: the customer speaking.
WORDS = st.sampled_from([
    " 个包裹丢了", " but the box was wet", ", refund please", " - where is my parcel?", "点",
    "点です",
    " 😡", "?", "？", " 5", "/10", "0", " 还没到", ") thanks", "\n\nmy parcel never came",
    " stars? no", " but", "…",
]) | st.text(alphabet="abcdeghijklmnqruvwxyz包裹退款丢了", min_size=2, max_size=10).map(
    lambda w: " " + w
)
PREFIX = st.sampled_from(["", "#", "(", "No ", "about ", "我给", "1 个包裹丢了 "])


@dataclass(frozen=True)
class Case:
    channel: str
    scenario: str  # resolved | reopened | agent_asked
    text: str
    score: int | None  # the answer it must record; None: a message


@st.composite
def cases(draw: st.DrawFn) -> Case:
    channel = draw(st.sampled_from(["telegram", "webhook", "email"]))
    scenario = draw(st.sampled_from(["resolved", "reopened", "agent_asked"]))
    form, score = draw(st.sampled_from(SCORES))
    if draw(st.booleans()):
        text = draw(PADDING) + form + draw(PADDING) + draw(CLOSING)
        expected: int | None = score if scenario != "agent_asked" else None
    else:
        text = draw(PREFIX) + form + draw(WORDS)
        if draw(st.booleans()):
            text = draw(PADDING) + text
        expected = None
    if channel == "email" and not text.strip("\u200b\u200f\ufeff \n\r\u3000"):
        text = "5"
    return Case(channel, scenario, text, expected)


def collect(n: int) -> list[Case]:
    found: list[Case] = []

    @settings(
        max_examples=n, database=None, derandomize=True, deadline=None,
        suppress_health_check=list(HealthCheck), phases=[Phase.generate],
    )
    @given(cases())
    def take(case: Case) -> None:
        found.append(case)

    take()
    return found


def inbound(case: Case, n: int, text: str, at: datetime, store: MailStore) -> Inbound:
    user = f"gen{n}"
    if case.channel == "telegram":
        return Inbound("telegram", f"{9000 + n}:{at.timestamp():.0f}", str(9000 + n), text,
                       received_at=at)
    if case.channel == "webhook":
        return Inbound("webhook", f"shop:{user}:{at.timestamp():.0f}", f"shop:{user}", text,
                       received_at=at)
    message = EmailMessage()
    message["From"] = f"{user} <{user}@example.org>"
    message["To"] = "support@example.com"
    message["Subject"] = "Re: your order"
    message["Message-ID"] = f"<{user}-{at.timestamp():.0f}@example.org>"
    message["Authentication-Results"] = "mx.kefu.test; dmarc=pass header.from=example.org"
    message.set_content(
        f"{text}\n\nOn Mon, 1 Mar 2027 at 10:00, Support <support@example.com> wrote:\n"
        "> How would you rate us, 1 to 5?\n"
    )
    return to_inbound(message.as_bytes(), store, own_address="support@example.com", now=at,
                      auth=AUTH)


async def run(db: Database, all_cases: list[Case], store: MailStore) -> list[str]:
    async with db.transaction() as s:
        await staff.add(s, "amy")
    pipeline, _ = care_pipeline(db, CFG)
    pipeline.observers.insert(0, staff_group.mirror_observer(STAFF_ROOM))
    wrong: list[str] = []
    for n, case in enumerate(all_cases):
        first = await pipeline.receive(inbound(case, n, "where is my parcel?", T0, store))
        cid = first.conversation_id
        assert cid is not None
        async with db.transaction() as s:
            change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(minutes=1))
        assert change.survey_id is not None
        if case.scenario == "reopened":
            await pipeline.receive(inbound(case, n, "thanks!", T0 + timedelta(minutes=2), store))
        elif case.scenario == "agent_asked":
            async with db.transaction() as s:
                await agents.answer(s, cid, "How many parcels are missing?", agent="amy")
        reply = await pipeline.receive(inbound(case, n, case.text, T0 + timedelta(hours=2), store))
        async with db.sessions() as s:
            survey = await s.get(Survey, change.survey_id)
            conversation = await s.get(Conversation, cid)
            row = await s.get(Interaction, reply.interaction_id)
            posts = list(
                await s.scalars(
                    select(OutboxRow.payload).where(
                        OutboxRow.address == str(STAFF_CHAT), OutboxRow.conversation_id == cid
                    )
                )
            )
        assert survey is not None and conversation is not None and row is not None
        expected_status = "resolved" if case.scenario == "resolved" else "open"
        if case.score is not None:
            ok = (survey.score == case.score and row.direction == "event"
                  and conversation.status == expected_status)
        else:
            # The staff group got the reply itself (a conversation's mirrors may share a post).
            mirrored = any(row.text.strip() in str(p.get("text")) for p in posts)
            ok = (survey.score is None and row.direction == "in"
                  and conversation.status == "open" and mirrored)
        if not ok:
            wrong.append(f"{case} -> score {survey.score}, {row.direction}, {conversation.status}")
    await pipeline.close()
    return wrong


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_generated_replies_after_a_survey(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
        if backend == "sqlite"
        else request.getfixturevalue("postgres").create_database()
    )
    all_cases = collect(CASES[backend])
    assert {c.score is None for c in all_cases} == {True, False}

    async def go() -> list[str]:
        db = Database(url)
        await db.upgrade()
        try:
            return await run(db, all_cases, MailStore(tmp_path / "mail", 1 << 20))
        finally:
            await db.dispose()

    wrong = asyncio.run(go())
    print(f"\n{backend}: {len(all_cases)} generated replies, {len(wrong)} wrong")
    assert not wrong, wrong[:8]
