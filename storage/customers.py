"""Customers and their identities: lookup, merge, forget."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import (
    ColumnElement,
    Text,
    bindparam,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import Event
from storage import dialect, interactions, surveys
from storage.models import (
    OUTBOX_UNSENT,
    Acknowledgement,
    AuditEntry,
    CampaignDelivery,
    ChannelState,
    Conversation,
    Customer,
    CustomerHealth,
    Identity,
    Interaction,
    OutboxRow,
    Survey,
    TelegramLink,
    utcnow,
)
from storage.rows import rowcount, table_of


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


async def by_id(session: AsyncSession, customer_id: int) -> Customer | None:
    return await session.get(Customer, customer_id)


def add_identity(session: AsyncSession, channel: str, address: str, customer_id: int) -> None:
    session.add(Identity(channel=channel, address=address, customer_id=customer_id))


async def create(session: AsyncSession, display_name: str | None, language: str | None) -> int:
    """A new customer record; returns its id."""
    customer = Customer(display_name=display_name, language=language)
    session.add(customer)
    await session.flush()
    return customer.id


async def holder_of(session: AsyncSession, channel: str, address: str) -> Customer | None:
    """The customer record the identity (channel, address) points at (merged or not)."""
    return await session.scalar(
        select(Customer)
        .join(Identity, Identity.customer_id == Customer.id)
        .where(Identity.channel == channel, Identity.address == address)
    )


async def identity(session: AsyncSession, channel: str, address: str) -> Identity | None:
    """The identity (channel, address), whoever holds it."""
    return await session.scalar(
        select(Identity).where(Identity.channel == channel, Identity.address == address)
    )


async def holders(
    session: AsyncSession, channel: str, addresses: Sequence[str]
) -> list[tuple[str, int]]:
    """(address, customer id) of each of `addresses` that is an identity on `channel`."""
    rows = await session.execute(
        select(Identity.address, Identity.customer_id).where(
            Identity.channel == channel, Identity.address.in_(addresses)
        )
    )
    return [(address, customer_id) for address, customer_id in rows.all()]


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
    if not dialect.is_sqlite(session):
        # Both locked before anything moves: a batch writing either's messages holds the
        # customer until it commits, and what it wrote (a line, a new conversation) then moves
        # too. Moved first, a message committed meanwhile stayed with the merged-away record
        # (#16). Ordered by id, so two merges cannot deadlock. (SQLite: one writer at a time.)
        await session.execute(
            select(Customer.id)
            .where(Customer.id.in_(sorted({keep_id, gone_id})))
            .order_by(Customer.id)
            .with_for_update(key_share=True)
        )
    keep = await session.get(Customer, keep_id, populate_existing=True)
    gone = await session.get(Customer, gone_id, populate_existing=True)
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
    # CSAT answers and unused Telegram links belong to the person, so they follow the record.
    await _move(session, Survey, gone_id, keep_id)
    await _move(session, TelegramLink, gone_id, keep_id)
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

    for attr in (
        "display_name",
        "birthday",
        "birthday_md",
        "timezone",
        "language",
        "preferred_channel",
    ):
        if getattr(keep, attr) is None and getattr(gone, attr) is not None:
            setattr(keep, attr, getattr(gone, attr))
    keep.tags = sorted(set(keep.tags or []) | set(gone.tags or []))
    keep.vip = keep.vip or gone.vip
    # Consent is never widened by a merge: both records must have given it.
    keep.marketing_consent = keep.marketing_consent and gone.marketing_consent
    gone.merged_into = keep.id
    interactions.add_event(
        session,
        Event(
            keep.id,
            "system",
            f"customer {gone.id} merged into {keep.id}",
            {"kind": "merge", "from": gone.id, "into": keep.id},
            utcnow(),
        ),
    )
    return MergeResult(moved_identities, moved_conversations, moved_interactions)


async def _move(session: AsyncSession, model: type, src: int, dst: int) -> int:
    result = await session.execute(
        update(model).where(model.customer_id == src).values(customer_id=dst)  # type: ignore[attr-defined]
    )
    return rowcount(result)


ERASED = "[erased]"
ERASED_PREFIX = "erased:"
_KEY_CHANNEL, _KEY_NAME = "kefu", "erasure_key"


async def erasure_key(session: AsyncSession) -> bytes:
    """The installation's secret for erased external ids, made on first use (one per database)."""
    where = (ChannelState.channel == _KEY_CHANNEL, ChannelState.key == _KEY_NAME)
    found = await session.scalar(select(ChannelState.value).where(*where))
    if found is None:
        await session.execute(
            dialect.insert(session, ChannelState)
            .values(channel=_KEY_CHANNEL, key=_KEY_NAME, value={"hex": secrets.token_hex(32)},
                    updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=["channel", "key"])
        )
        found = await session.scalar(select(ChannelState.value).where(*where))
    assert found is not None
    return bytes.fromhex(found["hex"])


def erased_id(key: bytes, channel: str, external_id: str) -> str:
    """What a forgotten message's external id becomes: not reversible without the key (a Telegram
    id or a Message-ID cannot be read back), yet the same message delivered again maps to the same
    token, so the pipeline still knows it is a duplicate."""
    digest = hmac.new(key, f"{channel}\0{external_id}".encode(), hashlib.sha256).hexdigest()
    return ERASED_PREFIX + digest[:40]


@dataclass
class Erasure:
    customers: int = 0
    identities: int = 0
    conversations: int = 0
    interactions: int = 0
    outbox: int = 0
    # Files the erased rows pointed at (raw mail, attachments) that no other row needs: the caller
    # deletes them after the commit (storage knows no folders).
    files: list[str] = field(default_factory=list)


async def forget(session: AsyncSession, customer_id: int) -> Erasure:
    """Erases a customer's personal data everywhere: the whole merge chain (records merged into
    theirs keep names and birthdays), identities, the log, the outbox (their messages and the staff
    group's mirrors, alerts and SLA posts), external ids, surveys, Telegram links and the audit
    log. Rows stay, without content, so counts and reports stay true."""
    customer = await session.get(Customer, customer_id)
    if customer is None:
        raise CustomerError(f"no customer with id {customer_id}")
    customer = await live(session, customer)
    if not dialect.is_sqlite(session):
        # Locked before anything is read: a batch writing their message holds the customer
        # until it commits, and what it wrote is then erased too. Read after, the message
        # committed meanwhile kept their words (#16). (SQLite: one writer at a time.)
        await session.refresh(customer, with_for_update={"key_share": True})
        customer = await live(session, customer)
    if customer.forgotten_at is not None:
        raise CustomerError(f"customer {customer_id} was already forgotten")
    chain = await _chain(session, customer.id)
    identities = list(
        await session.scalars(select(Identity).where(Identity.customer_id.in_(chain)))
    )
    addresses = {(i.channel, i.address) for i in identities}
    conversation_ids = list(
        await session.scalars(select(Conversation.id).where(Conversation.customer_id.in_(chain)))
    )
    erasure = Erasure(
        customers=len(chain), identities=len(identities), conversations=len(conversation_ids)
    )
    await _erase_log(
        session,
        erasure,
        Interaction.customer_id.in_(chain)
        | Interaction.conversation_id.in_(conversation_ids)
        | _bounces_naming({address for channel, address in addresses if channel == "email"}),
    )
    names = {
        c
        for c in await session.scalars(select(Customer.display_name).where(Customer.id.in_(chain)))
        if c
    }
    await _erase_outbox(session, erasure, conversation_ids, addresses, names)
    if conversation_ids:
        await session.execute(
            update(Conversation)
            .where(Conversation.id.in_(conversation_ids))
            .values(reply_address=None, staff_thread=None)
        )
    actors = {f"{channel}:{address}" for channel, address in addresses} | {a for _, a in addresses}
    await _erase_audit(session, chain, conversation_ids, actors)
    await session.execute(delete(Identity).where(Identity.customer_id.in_(chain)))
    await session.execute(delete(TelegramLink).where(TelegramLink.customer_id.in_(chain)))
    await session.execute(delete(CustomerHealth).where(CustomerHealth.customer_id.in_(chain)))
    for member in chain:
        await surveys.erase_for_customer(session, member)
    now = utcnow()
    await session.execute(
        update(Customer)
        .where(Customer.id.in_(chain))
        .values(
            display_name=None, birthday=None, birthday_md=None, timezone=None, tags=[],
            marketing_consent=False, preferred_channel=None, forgotten_at=now,
        )
        .execution_options(synchronize_session="fetch")
    )
    await session.refresh(customer)
    erasure.files = await _unshared(session, erasure.files)
    return erasure


def _bounces_naming(emails: set[str]) -> ColumnElement[bool]:
    """The mail system's bounces of mail to these addresses: logged under the bounce's own sender,
    they name the address and carry the returned mail (meta failed_recipients, raw_path)."""
    if not emails:
        return Interaction.id.is_(None)  # no row
    meta = func.lower(cast(Interaction.meta, Text))
    return (Interaction.channel == "email") & or_(
        *[meta.contains(json.dumps(e.lower()), autoescape=True) for e in sorted(emails)]
    )


async def forget_conversation(session: AsyncSession, conversation_id: int) -> Erasure:
    """Erases one conversation's content (messages, files, the staff group's copies, survey comment,
    audit details); the customer and their other conversations stay."""
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise CustomerError(f"no conversation {conversation_id}")
    erasure = Erasure(conversations=1)
    await _erase_log(session, erasure, Interaction.conversation_id == conversation_id)
    await _erase_outbox(session, erasure, [conversation_id], set())
    conversation.staff_thread = None
    await session.execute(
        update(Survey).where(Survey.conversation_id == conversation_id).values(comment=None)
    )
    await _erase_audit(session, [], [conversation_id], set())
    erasure.files = await _unshared(session, erasure.files)
    return erasure


async def _chain(session: AsyncSession, root: int) -> list[int]:
    """`root` and every record merged into it, however many merges ago."""
    chain, frontier = [root], [root]
    while frontier:
        frontier = [
            i
            for i in await session.scalars(
                select(Customer.id).where(Customer.merged_into.in_(frontier))
            )
            if i not in chain
        ]
        chain.extend(frontier)
    return chain


def _files_of(attachments: Any, meta: Any) -> list[str]:
    found = []
    if isinstance(meta, dict) and isinstance(meta.get("raw_path"), str):
        found.append(meta["raw_path"])
    for item in attachments if isinstance(attachments, list) else []:
        url = item.get("url") if isinstance(item, dict) else None
        if isinstance(url, str) and url.startswith("file:"):
            found.append(unquote(urlparse(url).path))
    return found


async def _erase_log(session: AsyncSession, erasure: Erasure, where: Any) -> None:
    key = await erasure_key(session)
    rows = (
        await session.execute(
            select(
                Interaction.id,
                Interaction.channel,
                Interaction.external_id,
                Interaction.author_kind,
                Interaction.attachments,
                Interaction.meta,
            ).where(where)
        )
    ).all()
    changes = []
    for row_id, channel, external_id, author_kind, attachments, meta in rows:
        erasure.files.extend(_files_of(attachments, meta))
        kept: dict[str, Any] = {"erased": True}
        if isinstance(meta, dict) and isinstance(meta.get("kind"), str):
            kept["kind"] = meta["kind"]  # an event's kind (status, sla_breach) feeds reports
        ext = external_id
        if ext and not ext.startswith(ERASED_PREFIX):
            ext = erased_id(key, channel, ext)
        changes.append({
            "row": row_id, "ext": ext, "meta": kept,
            "customer": author_kind == "customer",
        })
    erasure.interactions += len(changes)
    table = table_of(Interaction)
    for batch in _batches(changes, 500):
        await session.execute(
            update(table)
            .where(table.c.id == bindparam("row"))
            .values(
                text=ERASED, attachments=[], external_id=bindparam("ext"), meta=bindparam("meta")
            ),
            batch,
        )
    customer_rows = [c["row"] for c in changes if c["customer"]]
    for batch_ids in _batches(customer_rows, 500):
        await session.execute(update(table).where(table.c.id.in_(batch_ids)).values(author_id=None))


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def _erase_outbox(
    session: AsyncSession,
    erasure: Erasure,
    conversation_ids: Sequence[int],
    addresses: set[tuple[str, str]],
    names: Iterable[str] = (),
) -> None:
    """The customer's own messages and the staff group's posts about their conversations, and
    the group's posts about no one conversation (the board of who handles what) that name them.
    A board post holds other conversations' lines too: it is erased whole (a staff copy)."""
    conditions: list[ColumnElement[bool]] = (
        [OutboxRow.conversation_id.in_(conversation_ids)] if conversation_ids else []
    )
    # JSON columns hold non-ASCII text as \u escapes.
    forms = {f for n in names for f in (n, json.dumps(n)[1:-1])}
    if forms:
        conditions.append(
            OutboxRow.conversation_id.is_(None)
            & or_(
                *[cast(OutboxRow.payload, Text).contains(f, autoescape=True) for f in sorted(forms)]
            )
        )
    by_channel: dict[str, list[str]] = {}
    for channel, address in addresses:
        by_channel.setdefault(channel, []).append(address)
    conditions += [
        (OutboxRow.channel == channel) & OutboxRow.address.in_(found)
        for channel, found in by_channel.items()
    ]
    if not conditions:
        return
    if conversation_ids:
        await session.execute(
            delete(Acknowledgement).where(Acknowledgement.conversation_id.in_(conversation_ids))
        )
    for channel, found in by_channel.items():
        await session.execute(
            delete(Acknowledgement).where(
                Acknowledgement.channel == channel, Acknowledgement.address.in_(found)
            )
        )
    where = or_(*conditions)
    # A row on the wire loses its claim: the worker's outcome, recorded after this commit (a
    # Telegram message key holds the chat id, a refusal can quote the address, a dead row adds a
    # line to the log), finds the claim gone and writes nothing (storage/deliveries.py finish).
    await session.execute(
        update(OutboxRow)
        .where(where, OutboxRow.status.in_(OUTBOX_UNSENT))
        .values(
            status="dead", last_error="customer forgotten", claim_token=None, claimed_until=None
        )
        .execution_options(synchronize_session=False)
    )
    result = await session.execute(
        update(OutboxRow)
        .where(where)
        .values(payload={"erased": True}, external_id=None)
        .execution_options(synchronize_session=False)
    )
    erasure.outbox += rowcount(result)
    # An error text can quote the address ("550 <amy@example.com>: no such user").
    await session.execute(
        update(OutboxRow)
        .where(where, OutboxRow.last_error != "customer forgotten")
        .values(last_error=ERASED)
        .execution_options(synchronize_session=False)
    )
    for channel, found in by_channel.items():
        await session.execute(
            update(OutboxRow)
            .where(OutboxRow.channel == channel, OutboxRow.address.in_(found))
            .values(address=ERASED)
            .execution_options(synchronize_session=False)
        )


async def _erase_audit(
    session: AsyncSession,
    customer_ids: Sequence[int],
    conversation_ids: Sequence[int],
    actors: set[str],
) -> None:
    subjects = [f"customer:{i}" for i in customer_ids] + [
        f"conversation:{i}" for i in conversation_ids
    ]
    for batch in _batches(subjects, 500):
        entries = await session.scalars(select(AuditEntry).where(AuditEntry.subject.in_(batch)))
        for entry in entries:
            # Who did what stays (a staff id, the action); what they wrote or saw does not.
            kept = {
                k: v
                for k, v in (entry.detail or {}).items()
                if k in ("staff_id", "role", "status", "previous")
            }
            if kept != entry.detail:
                entry.detail = {**kept, "erased": True}
    if actors:
        await session.execute(
            update(AuditEntry)
            .where(AuditEntry.actor.in_(sorted(actors)))
            .values(actor=ERASED, detail={"erased": True})
        )


async def _unshared(session: AsyncSession, files: Sequence[str]) -> list[str]:
    """The files no remaining row points at (raw mail and attachments are stored by content hash:
    the same attachment from another customer is theirs too)."""
    names = sorted({Path(f).name for f in files if f})
    if not names:
        return []
    shared: set[str] = set()
    for batch in _batches(names, 100):
        hit = or_(*[cast(Interaction.meta, Text).contains(n) for n in batch],
                  *[cast(Interaction.attachments, Text).contains(n) for n in batch])
        for attachments, meta in (
            await session.execute(select(Interaction.attachments, Interaction.meta).where(hit))
        ).all():
            shared |= {Path(f).name for f in _files_of(attachments, meta)}
    return sorted({f for f in files if f and Path(f).name not in shared})


def remove_files(paths: Iterable[str], root: str | Path) -> list[str]:
    """Deletes the given files that lie under `root` (the mail store); returns those it could
    not."""
    base = Path(root).resolve()
    failed = []
    for name in paths:
        path = Path(name).resolve()
        if not path.is_relative_to(base):
            continue  # never delete outside the store, whatever a row says
        try:
            path.unlink(missing_ok=True)
        except OSError:
            failed.append(str(path))
    return failed


async def mark_unreachable(session: AsyncSession, channel: str, address: str, reason: str) -> None:
    """Nothing more can be delivered to this address (a bounce): the identity says so, and why."""
    await session.execute(
        update(Identity)
        .where(Identity.channel == channel, Identity.address == address)
        .values(reachable=False, unreachable_reason=reason)
    )
