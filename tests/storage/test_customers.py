"""Customer lookup, merge and forget on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from handlers.agents import answer
from storage import customers
from storage.db import Database
from storage.models import (
    CampaignDelivery,
    Conversation,
    Customer,
    Identity,
    Interaction,
    OutboxRow,
    Survey,
)


async def seed(db: Database, *messages: tuple[str, str, str]) -> None:
    pipeline = plugged_pipeline(db)
    for ext, address, text in messages:
        channel, _, addr = address.partition("/")
        await pipeline.receive(Inbound(channel, ext, addr, text, display_name=addr.split("@")[0]))
    await pipeline.close()


async def test_find_by_id_address_and_channel_address(db: Database) -> None:
    await seed(db, ("m1", "email/amy@example.com", "hi"), ("m2", "webhook/shop:7", "hello"))
    async with db.sessions() as s:
        assert (await customers.find(s, "1")).id == 1
        assert (await customers.find(s, "amy@example.com")).id == 1
        assert (await customers.find(s, "shop:7")).id == 2
        assert (await customers.find(s, "webhook:shop:7")).id == 2
        with pytest.raises(customers.CustomerError, match="no customer"):
            await customers.find(s, "bob@example.com")


async def test_merge_moves_everything_and_never_widens_consent(db: Database) -> None:
    await seed(db, ("m1", "email/amy@example.com", "hi"), ("m2", "webhook/shop:7", "it's me, Amy"))
    async with db.transaction() as s:
        keep, gone = await s.get(Customer, 1), await s.get(Customer, 2)
        assert keep is not None and gone is not None
        keep.marketing_consent = False
        gone.marketing_consent = True
        gone.vip = True
        gone.tags = ["wholesale"]
        s.add(CampaignDelivery(campaign="birthday", occasion="2027", customer_id=2))
        s.add(Survey(conversation_id=2, customer_id=2, resolution=1, channel="webhook",
                     expires_at=datetime.now(UTC), score=4))
    async with db.transaction() as s:
        result = await customers.merge(s, 1, 2)
    assert (result.identities, result.conversations, result.interactions) == (1, 1, 1)
    async with db.sessions() as s:
        keep = await s.get(Customer, 1)
        gone = await s.get(Customer, 2)
        owners = set(await s.scalars(select(Identity.customer_id)))
        logged = list(await s.scalars(select(Interaction).order_by(Interaction.id)))
        delivery = await s.scalar(select(CampaignDelivery))
        assert keep is not None and gone is not None and delivery is not None
        assert gone.merged_into == 1 and owners == {1}
        assert keep.vip and keep.tags == ["wholesale"] and not keep.marketing_consent
        assert {row.customer_id for row in logged} == {1}
        assert logged[-1].meta == {"kind": "merge", "from": 2, "into": 1}
        assert delivery.customer_id == 1
        assert set(await s.scalars(select(Survey.customer_id))) == {1}  # CSAT follows the person
        assert (await customers.live(s, gone)).id == 1


async def test_forget_erases_personal_data_and_keeps_counts(db: Database) -> None:
    await seed(
        db,
        ("m1", "email/amy@example.com", "my card ends 4242"),
        ("m2", "email/bob@example.com", "hi"),
    )
    async with db.transaction() as s:
        await answer(s, 1, "Thanks Amy, refund on its way", agent="alice")
    async with db.transaction() as s:
        counts = await customers.forget(s, 1)
    assert (counts.identities, counts.interactions) == (1, 2)
    async with db.sessions() as s:
        amy = await s.get(Customer, 1)
        texts = set(await s.scalars(select(Interaction.text).where(Interaction.customer_id == 1)))
        addresses = set(await s.scalars(select(Identity.address)))
        row = await s.scalar(select(OutboxRow))
        conversation = await s.get(Conversation, 1)
    assert amy is not None and amy.display_name is None and amy.forgotten_at is not None
    assert texts == {customers.ERASED} and addresses == {"bob@example.com"}
    assert row is not None and row.status == "dead" and row.address == customers.ERASED
    assert conversation is not None and conversation.reply_address is None
    async with db.transaction() as s:
        with pytest.raises(customers.CustomerError, match="already forgotten"):
            await customers.forget(s, 1)
    # Writing again after a forget starts a new, unrelated customer.
    await seed(db, ("m3", "email/amy@example.com", "hello again"))
    async with db.sessions() as s:
        assert (await customers.find(s, "amy@example.com")).id == 3
