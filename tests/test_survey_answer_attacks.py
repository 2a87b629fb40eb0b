"""More survey answers as customers send them (#12): a score wrapped in the invisible marks that
keyboards and copy-paste add (RTL/LTR marks, zero-width spaces, a byte-order mark) is still a bare
score; a score that comes with a photo, a file or a mail attachment is the customer showing
something: a message that reopens, is classified and reaches staff, on every channel."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from bot.messages import Attachment, Inbound
from channels.email import MailStore
from handlers import lifecycle, staff_group, survey
from handlers.roles import SYSTEM
from storage.db import Database
from storage.models import Conversation, Interaction, OutboxRow, Survey
from tests.handlers.care_helpers import STAFF_CHAT, STAFF_ROOM, care_pipeline, config
from tests.servers.callback import CallbackServer
from tests.servers.kefu import base_config, post_signed, running_kefu, url
from tests.survey_mail import GMAIL_QUOTE, from_ann, received

# Format characters (Unicode category Cf) a customer cannot see: RLM, LRM, ZWSP, ZWNJ, word
# joiner, BOM, the bidi embeddings and isolates.
INVISIBLE = st.sampled_from(
    ["\u200f", "\u200e", "\u200b", "\u200c", "\u2060", "\ufeff", "\u202b", "\u202c", "\u2067",
     "\u2069", "\u061c"]
)
BARE = st.sampled_from(
    [("5", 5), ("1", 1), ("５", 5), ("5分", 5), ("4 stars", 4), ("⭐⭐", 2), ("三", 3), ("5/5", 5)]
)


@given(
    form=BARE,
    before=st.lists(INVISIBLE, max_size=3).map("".join),
    after=st.lists(INVISIBLE, max_size=3).map("".join),
    space=st.sampled_from(["", " ", "\n"]),
)
def test_a_bare_score_in_invisible_marks_is_an_answer(
    form: tuple[str, int], before: str, after: str, space: str
) -> None:
    text, score = form
    assert survey.parse_answer(f"{before}{text}{space}{after}") == (score, None)


@given(
    form=BARE,
    mark=INVISIBLE,
    words=st.sampled_from(["parcel lost", "包裹丢了", "refund", "where is it"]),
)
def test_invisible_marks_do_not_hide_words(form: tuple[str, int], mark: str, words: str) -> None:
    text, _ = form
    assert survey.parse_answer(f"{text}{mark}{words}") is None
    assert survey.parse_answer(f"{text} {mark}{words}{mark}") is None


T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(survey={"ask_after": "0s", "expires_after": "2d"})
PHOTO = b"\xff\xd8\xff\xe0" + b"broken-box" * 50


def _mail(n: int, body: str, at: datetime, store: MailStore, photo: bool) -> Inbound:
    message = from_ann(f"<ann-{n}@example.org>")
    message.set_content(body + GMAIL_QUOTE)
    if photo:
        message.add_attachment(PHOTO, maintype="image", subtype="jpeg", filename="box.jpg")
    return received(message, store, at)


def _telegram(n: int, text: str, at: datetime, store: MailStore, photo: bool) -> Inbound:
    # A photo with the caption "1", as channels/telegram_updates.py reads it.
    attachments = (
        (Attachment("photo", file_id=f"ph-{n}", mime_type="image/jpeg", caption=text),)
        if photo
        else ()
    )
    return Inbound("telegram", f"777:{n}", "777", text, received_at=at, attachments=attachments)


@pytest.mark.parametrize("make", [_telegram, _mail], ids=["telegram", "email"])
async def test_a_score_with_a_photo_is_a_message(
    db: Database,
    make: Callable[[int, str, datetime, MailStore, bool], Inbound],
    tmp_path: Path,
) -> None:
    store = MailStore(tmp_path / "mail", 1 << 20)
    pipeline, _ = care_pipeline(db, CFG)
    pipeline.observers.insert(0, staff_group.mirror_observer(STAFF_ROOM))
    first = await pipeline.receive(make(1, "where is my parcel?", T0, store, False))
    cid = first.conversation_id
    assert cid is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1))
    assert change.survey_id is not None
    shown = await pipeline.receive(make(2, "1", T0 + timedelta(hours=2), store, True))
    # A bare score without a photo still answers the next survey.
    async with db.transaction() as s:
        again = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=3))
    assert again.survey_id is not None
    await pipeline.receive(make(3, "\u200f4\u200b", T0 + timedelta(hours=4), store, False))
    await pipeline.close()
    assert shown.conversation_id == cid
    async with db.sessions() as s:
        asked = await s.get(Survey, change.survey_id)
        answered = await s.get(Survey, again.survey_id)
        conversation = await s.get(Conversation, cid)
        row = await s.get(Interaction, shown.interaction_id)
        mirrored = list(
            await s.scalars(
                select(OutboxRow.payload).where(
                    OutboxRow.channel == "telegram",
                    OutboxRow.address == str(STAFF_CHAT),
                    OutboxRow.conversation_id == cid,
                )
            )
        )
    assert asked is not None and asked.score is None
    assert row is not None and row.direction == "in" and row.attachments
    # The photo reopened it (the second resolve above refuses a resolved conversation); the
    # invisible-marked "4" then answered without reopening.
    assert conversation is not None and conversation.status == "resolved"
    # The photo reached the staff group (mirrors of one conversation may share one post).
    assert any("📎" in (p.get("text") or "") for p in mirrored), mirrored
    assert answered is not None and answered.score == 4


SECRET = "attack-secret-5c"


async def test_over_http_a_score_with_an_attachment_reopens(tmp_path: Path) -> None:
    async with CallbackServer(SECRET) as callback:
        cfg = base_config(
            f"sqlite+aiosqlite:///{tmp_path / 'kefu.db'}",
            webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET",
                                          "callback_url": callback.url}}},
            survey={"ask_after": "0s"},
        )
        async with (
            running_kefu(cfg, {"SHOP_SECRET": SECRET}) as kefu,
            httpx.AsyncClient(timeout=10) as client,
        ):
            endpoint = url(kefu, "/webhooks/shop")
            r = await post_signed(client, endpoint, SECRET,
                                  {"id": "m-1", "user": {"id": "u-1"}, "text": "hello?"})
            cid = r.json()["conversation_id"]
            async with kefu.db.transaction() as s:
                change = await lifecycle.resolve(s, cid, SYSTEM, kefu.config)
            r = await post_signed(
                client, endpoint, SECRET,
                {"id": "m-2", "user": {"id": "u-1"}, "text": "1",
                 "attachments": [{"url": "https://shop.example/u/box.jpg", "name": "box.jpg"}]},
            )
            assert r.status_code == 202, r.text
            async with kefu.db.sessions() as s:
                asked = await s.get(Survey, change.survey_id)
                conversation = await s.get(Conversation, cid)
    assert asked is not None and asked.score is None
    assert conversation is not None and conversation.status == "open"


LOGO = b"\x89PNG\r\n\x1a\n" + b"logo" * 600  # a signature logo: small, shown inside the body


def _outlook(n: int, score: str, at: datetime, store: MailStore, screenshot: bool) -> Inbound:
    """An HTML-only reply whose signature is a logo embedded by Content-ID (multipart/related);
    with `screenshot`, a pasted screenshot embedded the same way."""
    message = from_ann(f"<ann-outlook-{n}@example.org>", "RE: your order")
    shot = '<p><img src="cid:shot"></p>' if screenshot else ""
    message.set_content(
        f'<html><body><p>{score}</p>{shot}<p><img src="cid:logo"></p></body></html>',
        subtype="html",
    )
    message.add_related(LOGO, maintype="image", subtype="png", cid="<logo>",
                        filename="image001.png", disposition="inline")
    if screenshot:
        message.add_related(b"\x89PNG\r\n\x1a\n" + b"shot" * 60_000, maintype="image",
                            subtype="png", cid="<shot>", filename="image002.png",
                            disposition="inline")
    return received(message, store, at)


async def test_a_score_above_a_signature_logo_answers_and_a_screenshot_speaks(
    db: Database, tmp_path: Path
) -> None:
    store = MailStore(tmp_path / "mail", 1 << 22)
    pipeline, _ = care_pipeline(db, CFG)
    first = await pipeline.receive(_mail(1, "where is my parcel?", T0, store, False))
    cid = first.conversation_id
    assert cid is not None
    async with db.transaction() as s:
        rated = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1))
    signed = _outlook(2, "5", T0 + timedelta(hours=2), store, screenshot=False)
    assert signed.attachments  # the logo is kept with the message
    await pipeline.receive(signed)
    async with db.transaction() as s:
        await lifecycle.reopen(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=3))
        shown = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=3, minutes=1))
    await pipeline.receive(_outlook(3, "1", T0 + timedelta(hours=4), store, screenshot=True))
    await pipeline.close()
    async with db.sessions() as s:
        first_survey = await s.get(Survey, rated.survey_id)
        conversation = await s.get(Conversation, cid)
    assert first_survey is not None and first_survey.score == 5
    assert shown.survey_id is not None
    async with db.sessions() as s:
        second = await s.get(Survey, shown.survey_id)
    assert second is not None and second.score is None
    # "1" with a pasted screenshot shows staff something: it reopened the conversation.
    assert conversation is not None and conversation.status == "open"


async def test_a_score_its_channel_marked_a_complaint_is_a_complaint(db: Database) -> None:
    """A shop's webhook marks a message a complaint (type "complaint"): even "1" is then the
    customer complaining, classified as such and shown to staff, not a survey answer."""
    pipeline, _ = care_pipeline(db, CFG)
    first = await pipeline.receive(
        Inbound("webhook", "shop:c1", "shop:u5", "hello", received_at=T0)
    )
    cid = first.conversation_id
    assert cid is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1))
    marked = await pipeline.receive(
        Inbound("webhook", "shop:c2", "shop:u5", "1", received_at=T0 + timedelta(hours=2),
                kind="complaint")
    )
    await pipeline.close()
    async with db.sessions() as s:
        asked = await s.get(Survey, change.survey_id)
        conversation = await s.get(Conversation, cid)
        row = await s.get(Interaction, marked.interaction_id)
    assert asked is not None and asked.score is None
    assert conversation is not None and conversation.status == "open" and conversation.is_complaint
    assert row is not None and row.direction == "in" and "complaint" in row.meta
