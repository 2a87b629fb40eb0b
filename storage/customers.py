"""Customers and their identities: lookup, merge, forget."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import surveys
from storage.models import (
    CampaignDelivery,
    Conversation,
    Customer,
    Identity,
    Interaction,
    OutboxRow,
    utcnow,
)


class CustomerError(LookupError):
    pass


async def find(session: AsyncSession, ref: str) -> Customer:
    """ID, or an address on any channel ("alice@example.com", "shop:u-17"), or CHANNEL:ADDRESS."""
    ref = ref.strip()
    if ref.isdigit():
        customer = await session.get(Customer, int(ref))
        if customer is not None:
            return customer
    identities = list(await session.scalars(select(Identity).where(Identity.address == ref)))
    if not identities and ":" in ref:
        channel, _, address = ref.partition(":")
        identities = list(
            await session.scalars(
                select(Identity).where(Identity.channel == channel, Identity.address == address)
            )
        )
    owners = {i.customer_id for i in identities}
    if len(owners) > 1:
        raise CustomerError(
            f"{ref!r} is an address of several customers ({', '.join(map(str, sorted(owners)))}): "
            "use CHANNEL:ADDRESS or the customer id"
        )
    if not owners:
        raise CustomerError(f"no customer with id or address {ref!r}")
    customer = await session.get(Customer, owners.pop())
    assert customer is not None
    return customer


async def live(session: AsyncSession, customer: Customer) -> Customer:
    """Follows merged_into to the record that holds the customer now."""
    seen = {customer.id}
    while customer.merged_into is not None:
        nxt = await session.get(Customer, customer.merged_into)
        if nxt is None or nxt.id in seen:
            break
        seen.add(nxt.id)
        customer = nxt
    return customer


async def identities_of(session: AsyncSession, customer_id: int) -> list[Identity]:
    return list(
        await session.scalars(
            select(Identity).where(Identity.customer_id == customer_id).order_by(Identity.id)
        )
    )


@dataclass(frozen=True, slots=True)
class MergeResult:
    identities: int
    conversations: int
    interactions: int


async def merge(session: AsyncSession, keep_id: int, gone_id: int) -> MergeResult:
    """Moves everything of customer `gone_id` onto `keep_id`; `gone_id` stays as a pointer."""
    if keep_id == gone_id:
        raise CustomerError("cannot merge a customer into itself")
    keep = await session.get(Customer, keep_id)
    gone = await session.get(Customer, gone_id)
    for ref, row in ((keep_id, keep), (gone_id, gone)):
        if row is None:
            raise CustomerError(f"no customer with id {ref}")
    assert keep is not None and gone is not None
    for row in (keep, gone):
        if row.merged_into is not None:
            raise CustomerError(f"customer {row.id} was already merged into {row.merged_into}")
        if row.forgotten_at is not None:
            raise CustomerError(f"customer {row.id} was forgotten; nothing to merge")

    moved_identities = await _move(session, Identity, gone_id, keep_id)
    moved_conversations = await _move(session, Conversation, gone_id, keep_id)
    moved_interactions = await _move(session, Interaction, gone_id, keep_id)
    # A greeting already sent to either record counts for the merged one; keep one row per occasion.
    taken = {
        tuple(row)
        for row in (
            await session.execute(
                select(CampaignDelivery.campaign, CampaignDelivery.occasion).where(
                    CampaignDelivery.customer_id == keep_id
                )
            )
        )
    }
    for delivery in await session.scalars(
        select(CampaignDelivery).where(CampaignDelivery.customer_id == gone_id)
    ):
        if (delivery.campaign, delivery.occasion) not in taken:
            delivery.customer_id = keep_id

    for attr in ("display_name", "birthday", "birthday_md", "timezone", "language", "preferred_channel"):
        if getattr(keep, attr) is None and getattr(gone, attr) is not None:
            setattr(keep, attr, getattr(gone, attr))
    keep.tags = sorted(set(keep.tags or []) | set(gone.tags or []))
    keep.vip = keep.vip or gone.vip
    # Consent is never widened by a merge: both records must have given it.
    keep.marketing_consent = keep.marketing_consent and gone.marketing_consent
    gone.merged_into = keep.id
    session.add(
        Interaction(
            customer_id=keep.id,
            channel="system",
            direction="event",
            author_kind="system",
            text=f"customer {gone.id} merged into {keep.id}",
            meta={"kind": "merge", "from": gone.id, "into": keep.id},
            created_at=utcnow(),
        )
    )
    return MergeResult(moved_identities, moved_conversations, moved_interactions)


async def _move(session: AsyncSession, model: type, src: int, dst: int) -> int:
    result = await session.execute(
        update(model).where(model.customer_id == src).values(customer_id=dst)  # type: ignore[attr-defined]
    )
    return result.rowcount or 0


ERASED = "[erased]"


async def forget(session: AsyncSession, customer_id: int) -> dict[str, int]:
    """Erases personal data; keeps rows (without content) so counts and reports stay true."""
    customer = await session.get(Customer, customer_id)
    if customer is None:
        raise CustomerError(f"no customer with id {customer_id}")
    if customer.forgotten_at is not None:
        raise CustomerError(f"customer {customer_id} was already forgotten")
    counts = {
        "identities": await session.scalar(
            select(func.count()).select_from(Identity).where(Identity.customer_id == customer_id)
        )
        or 0,
        "interactions": await session.scalar(
            select(func.count())
            .select_from(Interaction)
            .where(Interaction.customer_id == customer_id)
        )
        or 0,
    }
    addresses = [(i.channel, i.address) for i in await identities_of(session, customer_id)]
    await session.execute(
        update(Interaction)
        .where(Interaction.customer_id == customer_id)
        .values(text=ERASED, attachments=[], meta={"erased": True}, author_id=None)
    )
    pending = ("pending", "deferred", "failed", "sending")
    for channel, address in addresses:
        await session.execute(
            update(OutboxRow)
            .where(OutboxRow.channel == channel, OutboxRow.address == address)
            .where(OutboxRow.status.in_(pending))
            .values(status="dead", last_error="customer forgotten", payload={"erased": True})
        )
        await session.execute(
            update(OutboxRow)
            .where(OutboxRow.channel == channel, OutboxRow.address == address)
            .values(address=ERASED, payload={"erased": True})
        )
    await session.execute(
        Identity.__table__.delete().where(Identity.customer_id == customer_id)
    )
    await session.execute(
        update(Conversation)
        .where(Conversation.customer_id == customer_id)
        .values(reply_address=None, staff_thread=None)
    )
    await surveys.erase_for_customer(session, customer_id)
    customer.display_name = None
    customer.birthday = None
    customer.birthday_md = None
    customer.timezone = None
    customer.tags = []
    customer.marketing_consent = False
    customer.preferred_channel = None
    customer.forgotten_at = utcnow()
    return counts
