"""Opt-out through the real pipeline on SQLite and PostgreSQL: consent withdrawn, greetings not yet
sent cancelled, confirmation logged and queued in the customer's language."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select

from bot.config import parse_config
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from handlers.consent import ConsentObserver, normalise
from handlers.greetings import Planner, Reach
from handlers.templating import Templates
from storage.db import Database
from storage.models import CampaignDelivery, Customer, Identity, Interaction, OutboxRow


@pytest.mark.parametrize(
    ("text", "opt_out"),
    [
        ("退订", True),
        (" 退订。", True),
        ("TD", True),
        ("ｔｄ", True),  # full-width, as Chinese input methods type it
        ("Unsubscribe", True),
        ("STOP!", True),
        ("取消订阅", True),
        ("please stop", False),
        ("我要退订单", False),
        ("stopped", False),
    ],
)
def test_only_a_whole_message_opts_out(text: str, opt_out: bool) -> None:
    assert ConsentObserver(Templates()).is_opt_out(text) is opt_out


def test_extra_words_from_config() -> None:
    observer = ConsentObserver(Templates(), ["停止推送"])
    assert observer.is_opt_out("停止推送") and normalise(" ＳＴＯＰ ") == "stop"


async def customer(db: Database, address: str, language: str | None) -> int:
    async with db.transaction() as session:
        c = Customer(display_name="客户", birthday=date(1990, 1, 5), birthday_md="01-05",
                     timezone="Asia/Shanghai", language=language, marketing_consent=True, tags=[])
        session.add(c)
        await session.flush()
        session.add(Identity(customer_id=c.id, channel="webhook", address=address))
        return c.id


def inbound(n: int, address: str, text: str) -> Inbound:
    return Inbound(channel="webhook", external_id=f"shop:m{n}", address=address, text=text,
                   received_at=datetime(2027, 1, 5, 0, 30, tzinfo=UTC))


async def test_opt_out_cancels_the_waiting_greeting_and_confirms(db: Database) -> None:
    cfg = parse_config({"campaigns": {"birthday": {"enabled": True}},
                        "webhook": {"sources": {"shop": {"secret_env": "S", "callback_url": "http://127.0.0.1:9/cb"}}}})
    templates = Templates()
    zh = await customer(db, "shop:zh", None)
    en = await customer(db, "shop:en", "en")
    planner = Planner(cfg, templates, Reach.of(cfg, ["webhook"]))
    assert (
        await planner.plan(
            db, "birthday", date(2027, 1, 5), datetime(2027, 1, 5, 0, 0, tzinfo=UTC), lead=None
        )
    ).planned == 2

    pipeline = plugged_pipeline(db, observers=[ConsentObserver(templates)])
    try:
        await pipeline.receive_many(
            [inbound(1, "shop:zh", "退订"), inbound(2, "shop:en", "Unsubscribe")]
        )
        # again: confirmed again, no harm
        await pipeline.receive_many([inbound(3, "shop:en", "stop")])
    finally:
        await pipeline.close()

    async with db.sessions() as session:
        consent = dict(
            (await session.execute(select(Customer.id, Customer.marketing_consent))).all()
        )
        rows = {d.customer_id: d for d in await session.scalars(select(CampaignDelivery))}
        outbox = list(await session.scalars(select(OutboxRow).order_by(OutboxRow.id)))
        events = list(await session.scalars(
            select(Interaction).where(Interaction.direction == "event").order_by(Interaction.id)))
    assert consent == {zh: False, en: False}
    assert {cid: d.status for cid, d in rows.items()} == {zh: "cancelled", en: "cancelled"}
    greetings = [o for o in outbox if o.payload.get("kind") == "greeting"]
    assert [o.status for o in greetings] == ["dead", "dead"]
    assert all("consent withdrawn" in (o.last_error or "") for o in greetings)
    confirmations = {
        o.address: o.payload["text"] for o in outbox if o.payload.get("kind") == "notice"
    }
    assert "已为您退订" in confirmations["shop:zh"]  # no language on record: the word was Chinese
    assert "You are unsubscribed" in confirmations["shop:en"]
    assert sum(1 for o in outbox if o.payload.get("kind") == "notice") == 3
    assert [e.meta["had_consent"] for e in events if e.meta.get("kind") == "consent_withdrawn"] == [
        True,
        True,
        False,
    ]
    # and nobody without consent is planned again
    again = await planner.plan(
        db, "birthday", date(2028, 1, 5), datetime(2028, 1, 5, 0, 0, tzinfo=UTC), lead=None
    )
    assert again.planned == 0
