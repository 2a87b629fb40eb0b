"""Tying a Telegram user to a customer record kefu already has (imported from a spreadsheet, met by
email): by a single-use deep link (`kefu customers link-telegram ID`), or by the user sharing their
own phone number, which matches the record's "phone" identity.

When the Telegram user already wrote before and so has a customer record of their own, that record
is merged into the known one (storage.customers.merge): identities, conversations and log move, the
old id stays as a pointer, and the log keeps every row.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

import phonenumbers
from sqlalchemy.ext.asyncio import AsyncSession

from bot.commands import LinkRequest
from bot.text import redact_id
from storage import audit, customers
from storage import telegram_links as links
from storage.db import Database
from storage.models import utcnow

log = logging.getLogger("kefu.telegram_links")

PHONE = "phone"


class LinkError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Linked:
    outcome: str  # linked | already | merged | rejected | recorded
    customer_id: int | None = None
    reason: str = ""


def normalise_phone(raw: str, default_region: str | None = None) -> str | None:
    """Any written form -> E.164 ("+8613800138000"); None when it is not a valid number.

    Telegram sends contact numbers as digits with the country code but often without "+"."""
    raw = raw.strip()
    if not raw:
        return None
    candidates = [raw] if raw.startswith("+") or default_region else [raw, "+" + raw.lstrip("0")]
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, default_region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None


async def create_link(session: AsyncSession, customer_id: int, *, ttl_days: int = 30) -> str:
    customer = await customers.by_id(session, customer_id)
    if customer is None:
        raise LinkError(f"no customer with id {customer_id}")
    customer = await customers.live(session, customer)
    if customer.forgotten_at is not None:
        raise LinkError(f"customer {customer_id} was forgotten")
    # 24 random bytes -> 32 URL-safe characters: within Telegram's 64 of [A-Za-z0-9_-], unguessable.
    token = secrets.token_urlsafe(24)
    links.add(session, token, customer.id, utcnow(), timedelta(days=ttl_days))
    return token


async def attach(
    session: AsyncSession,
    channel: str,
    address: str,
    target_id: int,
    *,
    display_name: str | None = None,
    language: str | None = None,
) -> Linked:
    """Makes (channel, address) an identity of customer `target_id`, merging if it had another."""
    target = await customers.by_id(session, target_id)
    if target is None:
        return Linked("rejected", reason=f"no customer {target_id}")
    target = await customers.live(session, target)
    if target.forgotten_at is not None:
        return Linked("rejected", reason=f"customer {target.id} was forgotten")
    identity = await customers.identity(session, channel, address)
    if identity is None:
        customers.add_identity(session, channel, address, target.id)
        if target.display_name is None:
            target.display_name = display_name
        if target.language is None:
            target.language = language
        await session.flush()
        return Linked("linked", target.id)
    owner = await customers.by_id(session, identity.customer_id)
    assert owner is not None
    owner = await customers.live(session, owner)
    if owner.id == target.id:
        return Linked("already", target.id)
    await customers.merge(session, target.id, owner.id)
    return Linked("merged", target.id, reason=f"customer {owner.id} merged into {target.id}")


async def link_start(session: AsyncSession, request: LinkRequest) -> Linked:
    token = request.value
    link = await links.by_token(session, token)
    if link is None:
        return Linked("rejected", reason="unknown link")
    if link.used_at is not None and link.used_by != request.user_id:
        return Linked("rejected", reason="link already used by another Telegram user")
    if link.used_at is None and link.expires_at < utcnow():
        return Linked("rejected", reason="link expired")
    result = await attach(
        session, request.channel, request.user_id, link.customer_id,
        display_name=request.display_name, language=request.language,
    )
    if result.outcome != "rejected" and link.used_at is None:
        link.used_at = utcnow()
        link.used_by = request.user_id
    return result


async def link_phone(session: AsyncSession, request: LinkRequest) -> Linked:
    phone = normalise_phone(request.value)
    if phone is None:
        return Linked("rejected", reason="not a valid phone number")
    holder = await customers.identity(session, PHONE, phone)
    if holder is not None:
        return await attach(
            session, request.channel, request.user_id, holder.customer_id,
            display_name=request.display_name, language=request.language,
        )
    # No record has this number yet: keep it on the Telegram user's record, so a later import or
    # another channel that knows the number finds them.
    identity = await customers.identity(session, request.channel, request.user_id)
    if identity is None:
        customer_id = await customers.create(session, request.display_name, request.language)
        customers.add_identity(session, request.channel, request.user_id, customer_id)
    else:
        customer_id = identity.customer_id
    customers.add_identity(session, PHONE, phone, customer_id)
    await session.flush()
    return Linked("recorded", customer_id)


async def handle(db: Database, request: LinkRequest) -> Linked:
    """The channel's link hook: one transaction, committed before the message itself is logged."""
    async with db.transaction() as session:
        if request.kind == "start":
            result = await link_start(session, request)
        elif request.kind == "phone":
            result = await link_phone(session, request)
        else:
            result = Linked("rejected", reason=f"unknown link kind {request.kind!r}")
        if result.outcome in ("linked", "merged", "recorded"):
            audit.record(
                session,
                f"telegram:{request.user_id}",
                f"telegram.link.{request.kind}",
                f"customer:{result.customer_id}",
                outcome=result.outcome,
                **({"detail": result.reason} if result.reason else {}),
            )
    level = logging.WARNING if result.outcome == "rejected" else logging.INFO
    log.log(
        level,
        "telegram.link.%s kind=%s user=%s customer=%s reason=%s",
        result.outcome,
        request.kind,
        redact_id(request.user_id),
        result.customer_id,
        result.reason or "-",
    )
    return result
