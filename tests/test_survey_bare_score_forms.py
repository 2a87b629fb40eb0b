"""A survey answer is a bare score in any form customers write one ("five stars", "1 ⭐", "5⭐",
"五星"), and nothing longer: a score followed by words is the customer speaking. Tried through
parse_answer (generated inputs) and over real HTTP to a running kefu (webhook in, callback out)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from bot.messages import Inbound
from channels.email import MailStore
from handlers import lifecycle, staff_group, survey
from handlers.roles import SYSTEM
from storage.db import Database
from storage.models import Conversation, Interaction, OutboxRow, Survey
from tests.handlers.care_helpers import STAFF_CHAT, STAFF_ROOM, care_pipeline, config
from tests.servers.callback import CallbackServer
from tests.servers.kefu import base_config, post_signed, running_kefu, url
from tests.survey_mail import GMAIL_QUOTE, from_ann, received

SECRET = "bare-score-secret-7f"

BARE = [
    ("five stars", 5),
    ("Five Stars!", 5),
    ("one star", 1),
    ("three", 3),
    ("1 ⭐", 1),
    ("1 ⭐️", 1),
    ("5⭐", 5),
    ("4 ★", 4),
    ("5 🌟", 5),
    ("五星", 5),
    ("五分", 5),
    ("二星", 2),
    ("三颗星", 3),
    ("５星", 5),
    ("５", 5),
    ("5分", 5),
    ("⭐⭐⭐⭐⭐", 5),
    ("5/5", 5),
    ("5 out of 5", 5),
    ("4 of 5", 4),
    ("4 out of 5 stars", 4),
    ("5/5 stars", 5),
    ("3/5 ⭐", 3),
    ("5️⃣", 5),
]
SPOKEN = [
    "1 个包裹丢了",
    "5 stars? no way, refund",
    "2 items missing",
    "3pm tomorrow ok?",
    "five stars for the courier, zero for the shop",
    "1 ⭐ because the parcel never came",
    "五星好评但是少了一件",
    "one more thing: the box was wet",
    "two packages are missing",
    "三天了还没到",
    "4 out of 5 stars, the box was wet",
    "5/5 stars but where is my refund",
]


@pytest.mark.parametrize(("text", "score"), BARE)
def test_a_bare_score_in_any_form_is_an_answer(text: str, score: int) -> None:
    assert survey.parse_answer(text) == (score, None)


@pytest.mark.parametrize("text", SPOKEN)
def test_a_score_with_words_is_a_message(text: str) -> None:
    assert survey.parse_answer(text) is None


# Words that are neither a score nor a score's unit (no s/p/o/t/f: "stars", "points", "of",
# "out of", "one", "two", "three", "four", "five"; no CJK numerals or 分/星/颗).
_LATIN = "abcdeghijklmnqruvwxyz"
_CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF).filter(
    lambda c: c not in "一二两三四五分星颗"
)
WORDS = st.one_of(
    st.text(alphabet=_LATIN, min_size=2, max_size=12),
    st.text(alphabet=_CJK, min_size=1, max_size=8),
)
SEPARATORS = st.sampled_from([" ", "  ", ", ", "，", " - ", ": ", "! ", "\n", "。", "... "])


@given(form=st.sampled_from(BARE), separator=SEPARATORS, word=WORDS)
def test_any_bare_form_followed_by_words_is_a_message(
    form: tuple[str, int], separator: str, word: str
) -> None:
    text, _ = form
    assert survey.parse_answer(f"{text}{separator}{word}") is None


@given(
    form=st.sampled_from(BARE),
    before=st.sampled_from(["", " ", "\u3000", "\n"]),
    after=st.sampled_from(["", " ", "!", "。", "！", "~", " !!", "\n"]),
)
def test_bare_forms_survive_spacing_and_closing_punctuation(
    form: tuple[str, int], before: str, after: str
) -> None:
    text, score = form
    assert survey.parse_answer(f"{before}{text}{after}") == (score, None)


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    async with CallbackServer(SECRET) as server:
        yield server


async def test_over_http_a_bare_form_answers_and_a_sentence_reopens_and_reaches_staff(
    tmp_path: Path, callback: CallbackServer
) -> None:
    config = base_config(
        f"sqlite+aiosqlite:///{tmp_path / 'kefu.db'}",
        webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET", "callback_url": callback.url}}},
        survey={"ask_after": "0s"},
    )
    async with (
        running_kefu(config, {"SHOP_SECRET": SECRET}) as kefu,
        httpx.AsyncClient(timeout=10) as client,
    ):
        endpoint = url(kefu, "/webhooks/shop")

        async def say(n: int, text: str) -> int:
            r = await post_signed(
                client, endpoint, SECRET, {"id": f"m-{n}", "user": {"id": "u-9"}, "text": text}
            )
            assert r.status_code == 202, r.text
            conversation_id: int = r.json()["conversation_id"]
            return conversation_id

        async def resolve(conversation_id: int) -> int:
            async with kefu.db.transaction() as s:
                change = await lifecycle.resolve(s, conversation_id, SYSTEM, kefu.config)
            assert change.survey_id is not None
            return change.survey_id

        cid = await say(1, "where is my order?")
        first = await resolve(cid)
        assert await say(2, "1 ⭐") == cid  # a bare score: answers, does not reopen
        second_cid = await say(3, "five stars")  # the survey was answered: this one speaks
        assert second_cid == cid
        second = await resolve(cid)
        assert await say(4, "5 stars? no way, refund") == cid  # words: reopens
        third = await resolve(cid)
        assert await say(5, "1 个包裹丢了，我要投诉，退款！") == cid  # reopens, and is a complaint

        async with kefu.db.sessions() as s:
            answered = await s.get(Survey, first)
            unanswered = await s.get(Survey, second)
            conversation = await s.get(Conversation, cid)
            spoken = await s.scalar(
                select(Interaction).where(Interaction.external_id == "shop:m-5")
            )
            left = await s.get(Survey, third)
            mirrored = list(
                await s.scalars(
                    select(OutboxRow.payload).where(
                        OutboxRow.channel == "telegram", OutboxRow.conversation_id == cid
                    )
                )
            )
        assert answered is not None and answered.score == 1
        assert unanswered is not None and unanswered.score is None
        assert left is not None and left.score is None
        assert conversation is not None and conversation.status == "open"
        assert spoken is not None and spoken.direction == "in" and "complaint" in spoken.meta
        assert mirrored == []  # no staff chat configured here: see the Telegram and email test


T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(survey={"ask_after": "0s", "expires_after": "2d"})




def _mail(n: int, body: str, at: datetime, store: MailStore) -> Inbound:
    message = from_ann(f"<ann-{n}@example.org>")
    message.set_content(body + GMAIL_QUOTE)
    return received(message, store, at)


def _telegram(n: int, text: str, at: datetime, store: MailStore) -> Inbound:
    return Inbound("telegram", f"777:{n}", "777", text, received_at=at)


@pytest.mark.parametrize("make", [_telegram, _mail], ids=["telegram", "email"])
async def test_on_telegram_and_email_a_bare_form_answers_and_words_reach_staff(
    db: Database, make: Callable[[int, str, datetime, MailStore], Inbound], tmp_path: Path
) -> None:
    store = MailStore(tmp_path / "mail", 1 << 20)
    pipeline, _ = care_pipeline(db, CFG)
    pipeline.observers.insert(0, staff_group.mirror_observer(STAFF_ROOM))
    first = await pipeline.receive(make(1, "where is my parcel?", T0, store))
    cid = first.conversation_id
    assert cid is not None
    surveys = []
    for n, text in enumerate(["five stars", "1 ⭐", "五星"], start=2):
        async with db.transaction() as s:
            if n > 2:
                await lifecycle.reopen(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=n))
            change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=n))
        assert change.survey_id is not None
        surveys.append(change.survey_id)
        at = T0 + timedelta(hours=n, minutes=30)
        assert (await pipeline.receive(make(n, text, at, store))).conversation_id == cid
    async with db.transaction() as s:
        await lifecycle.reopen(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=9))
        await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=9))
    spoken = await pipeline.receive(make(10, "2 items missing", T0 + timedelta(hours=10), store))
    await pipeline.close()
    assert spoken.conversation_id == cid
    async with db.sessions() as s:
        scores = [(await s.get(Survey, sid)).score for sid in surveys]  # type: ignore[union-attr]
        conversation = await s.get(Conversation, cid)
        mirrored = list(
            await s.scalars(
                select(OutboxRow.payload).where(
                    OutboxRow.channel == "telegram",
                    OutboxRow.address == str(STAFF_CHAT),
                    OutboxRow.conversation_id == cid,
                )
            )
        )
    assert scores == [5, 1, 5]
    assert conversation is not None and conversation.status == "open"
    assert any("2 items missing" in (p.get("text") or "") for p in mirrored)
    assert not any("five stars" in (p.get("text") or "") for p in mirrored)
