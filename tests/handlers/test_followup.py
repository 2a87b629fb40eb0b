"""Follow-up care (回访) with an injected clock: exactly one follow-up per resolved complaint on the
customer's channel, none without consent where it is required, none after an opt-out, none in
quiet hours; the answer threads into the conversation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot.config import Config, ConfigError
from bot.pipeline import Pipeline
from handlers import followup, lifecycle
from handlers.consent import ConsentObserver
from handlers.followup import FollowUps
from handlers.greetings import Reach
from handlers.roles import Actor
from handlers.templating import Templates
from storage import staff
from storage.db import Database
from storage.models import CampaignDelivery, Conversation, Customer, OutboxRow
from tests.handlers.care_helpers import care_pipeline, config, message

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai, the default zone
BROKEN = "The parcel arrived broken, this is unacceptable!"
SOURCES = {
    "sources": {
        "shop": {"secret_env": "SHOP_SECRET", "callback_url": "http://127.0.0.1:9/callback"}
    }
}


def setup(db: Database, **followup: object) -> tuple[Config, Pipeline, FollowUps]:
    cfg = config(webhook=SOURCES, campaigns={"followup": followup})
    pipeline, _ = care_pipeline(db, cfg, staff_chat_id=None)
    templates = Templates(None, "zh")
    pipeline.observers.append(ConsentObserver(templates))
    return cfg, pipeline, FollowUps(cfg, templates, Reach.of(cfg, {"webhook"}))


async def complaint_resolved(
    db: Database, pipeline: Pipeline, cfg: Config, user: str, at: datetime
) -> int:
    receipt = await pipeline.receive(message(f"{user}-1", BROKEN, at, user=user, language="en"))
    assert receipt.conversation_id is not None
    async with db.transaction() as s:
        lead = await staff.add(s, f"lead-{user}", role="lead")
        await lifecycle.resolve(
            s, receipt.conversation_id, Actor.of(lead), cfg, now=at + timedelta(hours=1)
        )
    return receipt.conversation_id


async def followups(db: Database) -> list[OutboxRow]:
    async with db.sessions() as s:
        return list(
            await s.scalars(
                select(OutboxRow)
                .where(OutboxRow.dedupe_key.like("followup:%"))
                .order_by(OutboxRow.id)
            )
        )


async def test_one_follow_up_on_the_customers_channel_and_the_answer_threads(db: Database) -> None:
    cfg, pipeline, planner = setup(db)
    conversation_id = await complaint_resolved(db, pipeline, cfg, "u1", T0)
    assert (await planner.tick(db, T0 + timedelta(days=2, hours=1))).sent == 0  # not yet
    assert (await planner.tick(db, T0 + timedelta(days=3, hours=1, minutes=5))).sent == 1
    # Again, and again later the same day: nothing more.
    assert (await planner.tick(db, T0 + timedelta(days=3, hours=1, minutes=20))).sent == 0
    assert (await planner.tick(db, T0 + timedelta(days=3, hours=5))).sent == 0
    (row,) = await followups(db)
    assert (row.channel, row.address, row.conversation_id) == (
        "webhook",
        "shop:u1",
        conversation_id,
    )
    assert row.payload["kind"] == "followup" and f"#{conversation_id}" in row.payload["text"]
    assert "follow" in row.payload["text"]  # the customer's language (en)
    async with db.sessions() as s:
        (delivery,) = await s.scalars(
            select(CampaignDelivery).where(CampaignDelivery.campaign == "followup")
        )
    assert delivery.outbox_id == row.id and delivery.status == "planned"

    answer = await pipeline.receive(
        message("u1-2", "还是坏的，没修好", T0 + timedelta(days=3, hours=3), user="u1")
    )
    await pipeline.close()
    assert answer.conversation_id == conversation_id
    async with db.sessions() as s:
        conversation = await s.get(Conversation, conversation_id)
    assert conversation is not None and conversation.status == "open"


async def test_consent_required_and_opt_out(db: Database) -> None:
    cfg, pipeline, planner = setup(db, consent="marketing")
    await complaint_resolved(db, pipeline, cfg, "yes", T0)
    await complaint_resolved(db, pipeline, cfg, "no", T0)
    async with db.transaction() as s:
        for c in await s.scalars(select(Customer)):
            c.marketing_consent = (
                c.display_name is None
                and (
                    await s.scalar(
                        select(Conversation.reply_address).where(Conversation.customer_id == c.id)
                    )
                )
                == "shop:yes"
            )
    assert (await planner.tick(db, T0 + timedelta(days=3, hours=2))).sent == 1
    assert [r.address for r in await followups(db)] == ["shop:yes"]
    async with db.sessions() as s:
        skipped = list(
            await s.scalars(select(CampaignDelivery).where(CampaignDelivery.status == "skipped"))
        )
    assert len(skipped) == 1 and "consent" in (skipped[0].reason or "")

    # A service follow-up (the default) goes without marketing consent, but not after 退订.
    cfg, pipeline, planner = setup(db)
    later = T0 + timedelta(days=10)
    await complaint_resolved(db, pipeline, cfg, "plain", later)
    await pipeline.receive(message("out-0", "hello", later - timedelta(hours=1), user="out"))
    await pipeline.receive(message("out-1", "退订", later - timedelta(minutes=30), user="out"))
    await complaint_resolved(db, pipeline, cfg, "out", later)
    await pipeline.close()
    await planner.tick(db, later + timedelta(days=3, hours=2))
    assert [r.address for r in await followups(db)] == ["shop:yes", "shop:plain"]


async def test_quiet_hours_wait_and_low_csat_counts_once(db: Database) -> None:
    cfg, pipeline, planner = setup(db)
    # Resolved at 21:30 Shanghai: due three days later at 21:30, inside quiet hours (21:00-08:00).
    at = T0 + timedelta(hours=10, minutes=30)
    await complaint_resolved(db, pipeline, cfg, "night", at)
    due = at + timedelta(hours=1, days=3)
    for step in range(0, 10 * 60, 15):  # every planner run through the night
        assert (await planner.tick(db, due + timedelta(minutes=step))).sent == 0
    morning = datetime(2027, 3, 5, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
    assert (await planner.tick(db, morning)).sent == 1

    # A 1/5 score brings the follow-up forward (a day after the answer); the resolution's own
    # follow-up is the same occasion and never comes a second time.
    conversation_id = await complaint_resolved(db, pipeline, cfg, "low", T0)
    await pipeline.receive(message("low-2", "1", T0 + timedelta(hours=2), user="low"))
    await pipeline.close()
    assert (await planner.tick(db, T0 + timedelta(days=1, hours=3))).sent == 1
    assert (await planner.tick(db, T0 + timedelta(days=3, hours=2))).sent == 0
    rows = [r for r in await followups(db) if r.conversation_id == conversation_id]
    assert len(rows) == 1


async def test_a_segment_narrows_who_is_followed_up(db: Database) -> None:
    """[campaigns.followup] segment: only that segment's customers get a follow-up; the others
    get a `skipped` row naming it (so the planner does not weigh them again every run)."""
    cfg = config(
        webhook=SOURCES,
        campaigns={"followup": {"segment": "vips"}},
        insight={"segments": {"vips": {"vip": True}}},
    )
    pipeline, _ = care_pipeline(db, cfg, staff_chat_id=None)
    planner = FollowUps(cfg, Templates(None, "zh"), Reach.of(cfg, {"webhook"}))
    await complaint_resolved(db, pipeline, cfg, "gold", T0)
    await complaint_resolved(db, pipeline, cfg, "plain", T0)
    await pipeline.close()
    async with db.transaction() as s:
        for c in await s.scalars(select(Customer)):
            address = await s.scalar(
                select(Conversation.reply_address).where(Conversation.customer_id == c.id)
            )
            c.vip = address == "shop:gold"
    outcome = await planner.tick(db, T0 + timedelta(days=3, hours=2))
    assert (outcome.sent, outcome.skipped) == (1, 1)
    assert [r.address for r in await followups(db)] == ["shop:gold"]
    async with db.sessions() as s:
        (skipped,) = await s.scalars(
            select(CampaignDelivery).where(CampaignDelivery.status == "skipped")
        )
    assert "vips" in (skipped.reason or "")
    # Nothing more on later runs, for either of them.
    assert (await planner.tick(db, T0 + timedelta(days=3, hours=5))).sent == 0
    assert len(await followups(db)) == 1


def test_an_unknown_follow_up_segment_stops_start_up() -> None:
    cfg = config(webhook=SOURCES, campaigns={"followup": {"segment": "vips"}})
    with pytest.raises(ConfigError, match=r"\[campaigns.followup\] segment has value 'vips'"):
        followup.build(cfg, Templates(None, "zh"), Reach.of(cfg, {"webhook"}))
