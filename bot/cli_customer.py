"""`kefu customers show`: the customer file (客户档案) - who they are, how to reach them, consent,
every conversation with its complaint flags and satisfaction answers, and their latest messages
across channels in time order.

Registered on bot/cli.py's app; shares bot/cli_common.py with it.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated, Any

import phonenumbers
import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession

from bot.cli_common import (
    DEFAULT_CONFIG,
    ConfigOption,
    check_format,
    load,
    out,
    table,
    with_db,
)
from storage import conversations, customers
from storage import customer_file as customer_file_rows
from storage.customers import CustomerError
from storage.db import Database
from storage.models import Customer


async def find(session: AsyncSession, ref: str, region: str) -> Customer:
    """By id or address; a phone number in any form the import reads ("138 0013 8000",
    "13800138000", "+86 138-0013-8000") finds the E.164 identity the import stored."""
    try:
        return await customers.find(session, ref)
    except CustomerError:
        phone = _e164(ref.removeprefix("phone:"), region)
        if phone is None or phone == ref:
            raise
        try:
            return await customers.find(session, f"phone:{phone}")
        except CustomerError:
            raise CustomerError(f"no customer with id or address {ref!r} (nor {phone})") from None


def _e164(value: str, region: str) -> str | None:
    try:
        parsed = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def birthday(cust: Customer) -> str | None:
    """As stored: a full date, or month-day when the year was not given ("02-06")."""
    if cust.birthday is not None:
        return cust.birthday.isoformat()
    return cust.birthday_md


async def customer_file(
    session: AsyncSession, ref: str, region: str, messages: int
) -> dict[str, Any]:
    found = await find(session, ref, region)
    cust = await customers.live(session, found)
    ids = await customers.identities_of(session, cust.id)
    convs = await conversations.of_customer(session, cust.id)
    reasons = await customer_file_rows.complaint_reasons(session, [c.id for c in convs])
    surveys = await customer_file_rows.surveys(session, cust.id)
    consent_events = await customer_file_rows.events(session, cust.id)
    latest = await customer_file_rows.latest_messages(session, cust.id, messages)
    return {
        "id": cust.id,
        "merged_from": found.id if found.id != cust.id else None,
        "name": cust.display_name,
        "language": cust.language,
        "timezone": cust.timezone,
        "birthday": birthday(cust),
        "tags": list(cust.tags or []),
        "vip": bool(cust.vip),
        "preferred_channel": cust.preferred_channel,
        "created_at": _iso(cust.created_at),
        "forgotten_at": _iso(cust.forgotten_at),
        "identities": [
            {
                "channel": i.channel,
                "address": i.address,
                "reachable": bool(i.reachable),
                "unreachable_reason": i.unreachable_reason,
            }
            for i in ids
        ],
        "marketing_consent": bool(cust.marketing_consent),
        "consent_history": [
            {"at": _iso(e.created_at), "channel": e.channel, **_consent(e.meta)}
            for e in consent_events
            if str((e.meta or {}).get("kind", "")).startswith("consent")
        ],
        "conversations": [
            {
                "id": c.id,
                "status": c.status,
                "priority": c.priority,
                "channel": c.reply_channel,
                "complaint": bool(c.is_complaint),
                "severity": c.severity,
                "reasons": reasons.get(c.id, []),
                "created_at": _iso(c.created_at),
                "updated_at": _iso(c.updated_at),
            }
            for c in convs
        ],
        "csat": [
            {
                "conversation_id": s.conversation_id,
                "asked_at": _iso(s.asked_at),
                "answered_at": _iso(s.answered_at),
                "score": s.score,
                "comment": s.comment,
            }
            for s in surveys
        ],
        "messages": [
            {
                "id": m.id,
                "at": _iso(m.created_at),
                "conversation_id": m.conversation_id,
                "channel": m.channel,
                "direction": m.direction,
                "author": m.author_kind,
                "text": m.text,
            }
            for m in latest
        ],
    }


def _consent(meta: dict[str, Any] | None) -> dict[str, Any]:
    meta = meta or {}
    return {"event": meta.get("kind"), "had_consent": meta.get("had_consent")}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _ts(value: str | None) -> str:
    return value[:16].replace("T", " ") if value else "—"


def render(data: dict[str, Any]) -> list[RenderableType]:
    parts: list[RenderableType] = []
    if data["merged_from"] is not None:
        parts.append(f"customer {data['merged_from']} was merged into {data['id']}")
    head = Table.grid(padding=(0, 2))
    head.add_column(overflow="fold")
    head.add_column(overflow="fold")
    for label, value in (
        ("id", data["id"]),
        ("name", data["name"]),
        ("language", data["language"]),
        ("timezone", data["timezone"]),
        ("birthday", data["birthday"]),
        ("tags", ", ".join(data["tags"])),
        ("vip", "yes" if data["vip"] else "no"),
        ("marketing consent", "yes" if data["marketing_consent"] else "no"),
        ("created", _ts(data["created_at"])),
        ("forgotten", _ts(data["forgotten_at"]) if data["forgotten_at"] else "no"),
    ):
        head.add_row(f"[bold]{label}[/]", escape(str(value if value not in (None, "") else "—")))
    parts.append(head)

    def section(title: str, grid: Table, empty: str) -> None:
        parts.append(Text(title, style="bold"))
        parts.append(grid if grid.row_count else Text(empty, style="dim"))

    idt = table("channel", "address", "reachable")
    for i in data["identities"]:
        idt.add_row(
            *_cells(
                i["channel"],
                i["address"],
                "yes" if i["reachable"] else f"no: {i['unreachable_reason']}",
            )
        )
    section("identities", idt, "none")
    consent = table("at", "channel", "event")
    for e in data["consent_history"]:
        consent.add_row(*_cells(_ts(e["at"]), e["channel"], e["event"]))
    section("consent history", consent, "no changes recorded")
    ct = table("id", "status", "priority", "channel", "complaint", "updated")
    for c in data["conversations"]:
        flag = ""
        if c["complaint"]:
            flag = " ".join(x for x in (c["severity"] or "yes", ", ".join(c["reasons"])) if x)
        ct.add_row(
            *_cells(
                c["id"], c["status"], c["priority"], c["channel"] or "—", flag, _ts(c["updated_at"])
            )
        )
    section("conversations", ct, "none")
    sat = table("conversation", "asked", "score", "comment")
    for s in data["csat"]:
        score = str(s["score"]) if s["score"] is not None else "no answer"
        sat.add_row(*_cells(s["conversation_id"], _ts(s["asked_at"]), score, s["comment"] or ""))
    section("satisfaction (CSAT)", sat, "no surveys")
    mt = table("at", "conversation", "channel", "from", "text")
    for m in data["messages"]:
        who = {"in": "customer", "out": m["author"], "note": "note"}.get(m["direction"], "")
        mt.add_row(*_cells(_ts(m["at"]), m["conversation_id"] or "—", m["channel"], who, m["text"]))
    section(f"last {len(data['messages'])} messages", mt, "none")
    return parts


def _cells(*values: object) -> list[str]:
    return [escape(str(v)) for v in values]


def customers_show(
    ref: Annotated[
        str, typer.Argument(help="Customer id, or an address: email, phone, SOURCE:USER.")
    ],
    config: ConfigOption = DEFAULT_CONFIG,
    messages: Annotated[
        int, typer.Option("--messages", min=0, help="How many recent messages to show.")
    ] = 20,
    fmt: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="table or json.")
    ] = "table",
) -> None:
    """The customer file: identities, birthday, tags, consent, conversations with complaint
    flags, CSAT answers and the latest messages across channels."""
    check_format(fmt, ("table", "json"))
    cfg = load(config)

    async def work(db: Database) -> dict[str, Any]:
        async with db.sessions() as session:
            return await customer_file(session, ref, cfg.customers.default_region, messages)

    data = with_db(cfg, work)
    if fmt == "json":
        sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
        return
    for part in render(data):
        out.print(part)
