"""The customer-health queries (流失预警): the signals a score is computed from, and the score rows.

Every signal is a set-based aggregate (GROUP BY customer_id) over a range of customer ids
(lo..hi): the full recompute passes a chunk of consecutive ids, the observer one id as lo = hi.
The statements are built once per dialect with bound parameters and run on the Core connection:
building a statement, expanding an IN list of thousands of ids and loading rows through the ORM
cost more than the queries themselves. Date columns are read as the driver gives them (text on
SQLite) and parsed here: SQLAlchemy's SQLite date parsing is most of a million-customer read.

The log aggregate reads only ix_interactions_customer (customer_id, direction, created_at), never
the table, except for the `event` rows an opt-out is looked up in.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    DateTime,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    text,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import Event
from bot.lookup import HealthRead, IsSevere, Signals, Stored
from storage import dialect, interactions
from storage.models import (
    OPEN_STATUSES,
    ComplaintReason,
    Conversation,
    Customer,
    CustomerHealth,
    Identity,
    Interaction,
    SlaBreach,
    Survey,
)

FAST_DAYS = 7.0  # half-life of the "recent" message rate
SLOW_DAYS = 56.0  # half-life of the "usual" message rate
RATE_HORIZON = timedelta(days=180)  # older messages weigh < 0.11 in the slow rate: not read
LOW_CSAT = 2  # survey scores at or below this are a bad experience


def parse(value: object) -> datetime | None:
    """A stored date as the driver gives it: text on SQLite (naive UTC), a naive datetime on
    PostgreSQL; aware UTC out."""
    if value is None:
        return None
    if type(value) is str:
        # Parsing with the offset appended is four times quicker than replace(tzinfo=) after it:
        # a million-customer recompute parses a few million of these.
        try:
            parsed = datetime.fromisoformat(value + "+00:00")
        except ValueError:  # text that carries its own offset
            parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


def _counted(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _raw(column: Any) -> Any:
    """The value as the driver returns it (no SQLAlchemy result processing); see parse()."""
    return type_coerce(column, Text)


_LO: BindParameter[int] = bindparam("lo")
_HI: BindParameter[int] = bindparam("hi")
_SINCE = bindparam("since", type_=DateTime())


def _in_range(column: Any) -> ColumnElement[bool]:
    between: ColumnElement[bool] = column.between(_LO, _HI)
    return between


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    complaint = Conversation.is_complaint.is_(True)
    # A complaint counts while the customer spoke in it within the window (a reopened one too).
    recent = and_(complaint, Conversation.updated_at >= _SINCE)
    opened = and_(complaint, Conversation.status.in_(OPEN_STATUSES))
    conversations = (
        select(
            Conversation.customer_id,
            _counted(opened),
            _counted(recent),
            _counted(and_(recent, Conversation.severity == "high")),
            _raw(func.max(case((complaint, Conversation.updated_at), else_=None))),
            func.max(Conversation.id),
            func.max(case((opened, Conversation.id), else_=None)),
        )
        .where(_in_range(Conversation.customer_id))
        .group_by(Conversation.customer_id)
    )
    owners = select(Conversation.id, Conversation.assignee).where(
        Conversation.id.in_(bindparam("ids", expanding=True))
    )
    cues = (
        select(Conversation.customer_id, ComplaintReason.reason)
        .select_from(ComplaintReason)
        .join(Conversation, Conversation.id == ComplaintReason.conversation_id)
        .where(
            Conversation.customer_id.in_(bindparam("ids", expanding=True)),
            Conversation.severity == "high",
            Conversation.updated_at >= _SINCE,
        )
        .order_by(ComplaintReason.id)
    )
    surveys = (
        select(
            Survey.customer_id,
            func.min(Survey.score),
            _raw(func.max(case((Survey.score <= LOW_CSAT, Survey.answered_at), else_=None))),
        )
        .where(
            _in_range(Survey.customer_id), Survey.score.is_not(None), Survey.answered_at >= _SINCE
        )
        .group_by(Survey.customer_id)
    )
    breaches = (
        select(Conversation.customer_id, func.count())
        .select_from(SlaBreach)
        .join(Conversation, Conversation.id == SlaBreach.conversation_id)
        .where(_in_range(Conversation.customer_id), SlaBreach.breached_at >= _SINCE)
        .group_by(Conversation.customer_id)
    )
    addresses = (
        select(Identity.customer_id, func.count(), _counted(Identity.reachable.is_(False)))
        .where(_in_range(Identity.customer_id), Identity.channel != "phone")
        .group_by(Identity.customer_id)
    )
    now = bindparam("now", type_=DateTime())
    if dialect == "sqlite":
        age = func.julianday(bindparam("now_text")) - func.julianday(Interaction.created_at)
    else:
        age = func.extract("epoch", now - Interaction.created_at) / 86400.0
    inbound = Interaction.direction == "in"
    rated = and_(inbound, Interaction.created_at >= bindparam("horizon", type_=DateTime()))
    # Only the event rows need the table (for meta): the others are read from the index alone.
    withdrawn = and_(
        Interaction.direction == "event",
        Interaction.meta["kind"].as_string() == "consent_withdrawn",
    )
    log = (
        select(
            Interaction.customer_id,
            _raw(func.max(case((inbound, Interaction.created_at), else_=None))),
            func.sum(case((rated, func.power(0.5, age / FAST_DAYS)), else_=0.0)),
            func.sum(case((rated, func.power(0.5, age / SLOW_DAYS)), else_=0.0)),
            func.max(case((withdrawn, 1), else_=0)),
        )
        .where(
            _in_range(Interaction.customer_id),
            Interaction.direction.in_(("in", "event")),
            # Rows dated after `now` (a recompute for a past moment) are not part of its picture.
            Interaction.created_at <= now,
        )
        .group_by(Interaction.customer_id)
    )
    return {
        "conversations": conversations,
        "owners": owners,
        "cues": cues,
        "surveys": surveys,
        "breaches": breaches,
        "addresses": addresses,
        "log": log,
    }


async def gather(
    session: AsyncSession,
    lo: int,
    hi: int,
    now: datetime,
    window: timedelta,
    severe: IsSevere,
    *,
    from_log: bool,
    owners: bool = True,
) -> dict[int, Signals]:
    """Signals of the customers with ids lo..hi that have any rows (a customer with none has
    nothing against them: Signals()). from_log: also the last contact, the message rates and the
    opt-out, read from the log (the full recompute); without it the caller keeps those itself.
    owners: also the conversation to open and its assignee (what a warning names)."""
    found: dict[int, Signals] = {}
    conn = await session.connection()
    st = _statements(conn.dialect.name)
    params: dict[str, Any] = {"lo": lo, "hi": hi, "since": naive(now - window)}

    latest: dict[int, int] = {}
    high: list[int] = []
    for cid, open_n, recent_n, high_n, last_complaint, last_id, open_id in (
        await conn.execute(st["conversations"], params)
    ).all():
        # The conversation to open: their latest open complaint, else their latest conversation.
        conversation = int(open_id) if open_id is not None else int(last_id)
        found[cid] = s = Signals(
            open_complaints=int(open_n or 0),
            recent_complaints=int(recent_n or 0),
            high_severity=int(high_n or 0),
            last_complaint_at=parse(last_complaint),
            conversation_id=conversation,
        )
        latest[cid] = conversation
        if s.high_severity:
            high.append(cid)
    if owners and latest:
        assignees = {
            conv: assignee
            for conv, assignee in await conn.execute(st["owners"], {"ids": list(latest.values())})
        }
        for cid, conv in latest.items():
            found[cid].owner = assignees.get(conv)
    if high:
        await _cues(conn, st, found, high, params["since"], severe)
    for cid, worst, low_at in (await conn.execute(st["surveys"], params)).all():
        s = found.get(cid) or found.setdefault(cid, Signals())
        s.worst_csat = int(worst) if worst is not None else None
        s.last_low_csat_at = parse(low_at)
    for cid, n in (await conn.execute(st["breaches"], params)).all():
        (found.get(cid) or found.setdefault(cid, Signals())).sla_breaches = int(n)
    for cid, total, unreachable in (await conn.execute(st["addresses"], params)).all():
        if unreachable:  # a customer whose addresses all work: nothing to say
            s = found.get(cid) or found.setdefault(cid, Signals())
            s.identities, s.unreachable = int(total), int(unreachable)
        elif cid in found:
            found[cid].identities = int(total)
    if from_log:
        log_params = {
            "lo": lo,
            "hi": hi,
            "now": naive(now),
            "now_text": naive(now).isoformat(sep=" "),
            "horizon": naive(now - RATE_HORIZON),
        }
        for cid, last, fast, slow, opted in (await conn.execute(st["log"], log_params)).all():
            s = found.get(cid) or found.setdefault(cid, Signals())
            s.last_contact_at = parse(last)
            s.rate_fast, s.rate_slow = float(fast or 0.0), float(slow or 0.0)
            s.opted_out = bool(opted)
            s.rate_at = now
    return found


async def _cues(
    conn: Any,
    st: dict[str, Any],
    found: dict[int, Signals],
    high: list[int],
    since: datetime,
    severe: IsSevere,
) -> None:
    other: dict[int, list[str]] = {}
    for cid, reason in await conn.execute(st["cues"], {"ids": high, "since": since}):
        listed = found[cid].high_severity_cues if severe(reason) else other.setdefault(cid, [])
        if reason not in listed:
            listed.append(reason)
    for cid, reasons in other.items():
        if not found[cid].high_severity_cues:  # severe by a cue of the team's own (extra_cues)
            found[cid].high_severity_cues = reasons


def _reasons(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        loaded = json.loads(value)
        return list(loaded) if isinstance(loaded, list) else []
    return list(value) if isinstance(value, list) else []


def _loaded(value: object) -> Any:
    """A JSON value as the driver gives it (text on both: see _raw)."""
    return json.loads(value) if isinstance(value, str) else value


@functools.cache
def _batch_statement(dialect_name: str) -> Any:
    """A pipeline batch's customers (`ids`): each one's stored health row and, for those who need
    them (`full`, those without a row, and those whose row says opted out: they may have consented
    again), their signals. One statement, so one round trip: the signals are correlated
    subqueries on the one customer's rows by an index, each under a CASE, which both databases
    evaluate only for the rows that take that branch. Each signal comes back as a JSON array."""
    if dialect_name == "sqlite":
        array, aggregate = func.json_array, func.json_group_array
    else:
        array, aggregate = func.json_build_array, func.json_agg
    h = CustomerHealth
    batch = (
        select(
            Customer.id.label("id"),
            or_(
                h.customer_id.is_(None),
                h.opted_out.is_(True),
                Customer.id.in_(bindparam("full", expanding=True)),
            ).label("need"),
            h.customer_id.label("stored"),
            _raw(h.reasons).label("reasons"),
            h.rate_fast,
            h.rate_slow,
            _raw(h.rate_at).label("rate_at"),
            _raw(h.last_contact_at).label("last_contact_at"),
            h.opted_out,
            _raw(h.alerted_at).label("alerted_at"),
            h.crossings,
        )
        .select_from(Customer)
        .outerjoin(h, h.customer_id == Customer.id)
        .where(Customer.id.in_(bindparam("ids", expanding=True)))
        .subquery()
    )
    cid = batch.c.id
    complaint = Conversation.is_complaint.is_(True)
    recent = and_(complaint, Conversation.updated_at >= _SINCE)
    conversations = select(
        array(
            _counted(and_(complaint, Conversation.status.in_(OPEN_STATUSES))),
            _counted(recent),
            _counted(and_(recent, Conversation.severity == "high")),
            func.max(case((complaint, Conversation.updated_at), else_=None)),
        )
    ).where(Conversation.customer_id == cid)
    surveys = select(
        array(
            func.min(Survey.score),
            func.max(case((Survey.score <= LOW_CSAT, Survey.answered_at), else_=None)),
        )
    ).where(Survey.customer_id == cid, Survey.score.is_not(None), Survey.answered_at >= _SINCE)
    breaches = (
        select(func.count())
        .select_from(SlaBreach)
        .join(Conversation, Conversation.id == SlaBreach.conversation_id)
        .where(Conversation.customer_id == cid, SlaBreach.breached_at >= _SINCE)
    )
    addresses = select(array(func.count(), _counted(Identity.reachable.is_(False)))).where(
        Identity.customer_id == cid, Identity.channel != "phone"
    )
    # Reasons of their recent high-severity conversations, with their ids (JSON aggregates have
    # no order on SQLite before 3.44: the rows are put in id order here).
    cues = (
        select(aggregate(array(ComplaintReason.id, ComplaintReason.reason)))
        .select_from(ComplaintReason)
        .join(Conversation, Conversation.id == ComplaintReason.conversation_id)
        .where(
            Conversation.customer_id == cid,
            Conversation.severity == "high",
            Conversation.updated_at >= _SINCE,
        )
    )

    def when_needed(signal: Any) -> Any:
        return _raw(case((batch.c.need, signal.scalar_subquery()), else_=None))

    return select(
        batch,
        when_needed(conversations),
        when_needed(surveys),
        when_needed(breaches),
        when_needed(addresses),
        when_needed(cues),
    )


def _padded(ids: Sequence[int]) -> list[int]:
    """The list with its last id repeated up to a power of two: an IN list of n parameters is a
    statement of its own, prepared on PostgreSQL once per connection and size."""
    if not ids:
        return []
    size = 1 << (len(ids) - 1).bit_length()
    return [*ids, *[ids[-1]] * (size - len(ids))]


async def batch(
    session: AsyncSession,
    customer_ids: Sequence[int],
    signals_for: Sequence[int],
    now: datetime,
    window: timedelta,
    severe: IsSevere,
) -> dict[int, HealthRead]:
    """What the churn observer needs of a pipeline batch's customers, in one statement: see
    _batch_statement. Changes the batch's effects left pending (a complaint's severity raised)
    are written first, so the signals include them."""
    await session.flush()
    conn = await session.connection()
    since = naive(now - window)
    rows = await conn.execute(
        _batch_statement(conn.dialect.name),
        {"ids": _padded(customer_ids), "full": _padded(signals_for), "since": since},
    )
    found: dict[int, HealthRead] = {}
    for r in rows:
        stored = (
            None
            if r.stored is None
            else Stored(
                float(r.rate_fast or 0.0),
                float(r.rate_slow or 0.0),
                parse(r.rate_at),
                parse(r.last_contact_at),
                bool(r.opted_out),
                parse(r.alerted_at),
                int(r.crossings or 0),
            )
        )
        signals: Signals | None = None
        if r.need:
            open_n, recent_n, high_n, last_complaint = _loaded(r[11])
            worst, low_at = _loaded(r[12])
            addresses, unreachable = _loaded(r[14])
            signals = Signals(
                open_complaints=int(open_n or 0),
                recent_complaints=int(recent_n or 0),
                high_severity=int(high_n or 0),
                last_complaint_at=parse(last_complaint),
                worst_csat=int(worst) if worst is not None else None,
                last_low_csat_at=parse(low_at),
                sla_breaches=int(r[13] or 0),
                identities=int(addresses or 0),
                unreachable=int(unreachable or 0),
            )
            if signals.high_severity:
                _named_cues(signals, sorted(_loaded(r[15]) or ()), severe)
        found[int(r.id)] = HealthRead(_reasons(r.reasons), stored, signals)
    return found


def _named_cues(s: Signals, cues: Sequence[tuple[int, str]], severe: IsSevere) -> None:
    """The high-severity cues worth naming, first seen first (as _cues)."""
    other: list[str] = []
    for _, reason in cues:
        listed = s.high_severity_cues if severe(reason) else other
        if reason not in listed:
            listed.append(reason)
    if not s.high_severity_cues:  # severe by a cue of the team's own (extra_cues)
        s.high_severity_cues = other


# --- the full recompute's reads and writes ----------------------------------------------------

# A chunk of live customers with their stored row (None columns without one), by id. The reasons
# come back as the JSON text they were written as: the recompute compares them as text.
_CHUNK = (
    select(
        Customer.id,
        Customer.marketing_consent,
        CustomerHealth.customer_id,
        CustomerHealth.score,
        _raw(CustomerHealth.reasons),
        _raw(CustomerHealth.alerted_at),
        CustomerHealth.crossings,
        _raw(CustomerHealth.last_contact_at),
        CustomerHealth.opted_out,
        CustomerHealth.rate_fast,
        CustomerHealth.rate_slow,
        _raw(CustomerHealth.rate_at),
    )
    .outerjoin(CustomerHealth, CustomerHealth.customer_id == Customer.id)
    .where(
        Customer.id > bindparam("after"),
        Customer.merged_into.is_(None),
        Customer.forgotten_at.is_(None),
    )
    .order_by(Customer.id)
    .limit(bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A live customer and what their score row holds (stored False: no row yet)."""

    customer_id: int
    consent: bool
    stored: bool
    score: int
    reasons_json: str | None
    alerted_at: datetime | None
    crossings: int
    last_contact_at: datetime | None
    opted_out: bool
    rate_fast: float
    rate_slow: float
    rate_at: datetime | None


async def chunk(session: AsyncSession, after: int, limit: int) -> list[ChunkRow]:
    conn = await session.connection()
    rows = (await conn.execute(_CHUNK, {"after": after, "limit": limit})).all()
    return [
        ChunkRow(
            int(r[0]),
            bool(r[1]),
            r[2] is not None,
            int(r[3] or 0),
            None if r[4] is None else r[4] if isinstance(r[4], str) else json.dumps(r[4]),
            parse(r[5]),
            int(r[6] or 0),
            parse(r[7]),
            bool(r[8]),
            float(r[9] or 0.0),
            float(r[10] or 0.0),
            parse(r[11]),
        )
        for r in rows
    ]


async def any_scored(session: AsyncSession) -> bool:
    return await session.scalar(select(CustomerHealth.customer_id).limit(1)) is not None


HEALTH_COLUMNS = (
    "score",
    "band",
    "reasons",
    "last_contact_at",
    "rate_fast",
    "rate_slow",
    "rate_at",
    "opted_out",
    "alerted_at",
    "crossings",
    "updated_at",
)


# PostgreSQL: the rows as one array per column, unnested, in one statement. An executemany runs
# one INSERT per row on the server (each bound, planned and executed): one per message of a
# pipeline batch.
_PG_TYPES = (
    ("customer_id", "INTEGER[]"),
    ("score", "INTEGER[]"),
    ("band", "TEXT[]"),
    ("reasons", "TEXT[]"),
    ("last_contact_at", "TIMESTAMP[]"),
    ("rate_fast", "FLOAT8[]"),
    ("rate_slow", "FLOAT8[]"),
    ("rate_at", "TIMESTAMP[]"),
    ("opted_out", "BOOLEAN[]"),
    ("alerted_at", "TIMESTAMP[]"),
    ("crossings", "INTEGER[]"),
    ("updated_at", "TIMESTAMP[]"),
)
_PG_GIVEN = [c if c != "reasons" else "reasons_text" for c, _ in _PG_TYPES]
_PG_PICKED = [c if c != "reasons_text" else "CAST(reasons_text AS JSON)" for c in _PG_GIVEN]
_PG_UPSERT = text(
    f"INSERT INTO customer_health (customer_id, {', '.join(HEALTH_COLUMNS)}) "
    f"SELECT {', '.join(_PG_PICKED)} "
    f"FROM unnest({', '.join(f'CAST(:{c} AS {t})' for c, t in _PG_TYPES)}) "
    f"AS given({', '.join(_PG_GIVEN)}) "
    "ON CONFLICT (customer_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in HEALTH_COLUMNS)
)


_SQLITE_UPSERT = (
    f"INSERT INTO customer_health (customer_id, {', '.join(HEALTH_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(HEALTH_COLUMNS) + 1))}) "
    "ON CONFLICT (customer_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in HEALTH_COLUMNS)
)


def _sqlite_time(value: datetime | None) -> str | None:
    """What UTCDateTime writes on SQLite: naive UTC text with microseconds."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # the usual case: cut "+00:00" rather than replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")[:-6]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ", timespec="microseconds")


async def write(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Score rows in one statement (customer_id plus HEALTH_COLUMNS each): on PostgreSQL as arrays
    (_PG_UPSERT); on SQLite an executemany straight to the driver: at a million customers
    SQLAlchemy's per-row parameter processing is most of the recompute's time."""
    if not rows:
        return
    conn = await session.connection()
    if not dialect.is_sqlite(conn):
        # One row per customer (ON CONFLICT cannot update a row twice in one statement): the
        # last given wins, as it would in an executemany.
        last = list({r["customer_id"]: r for r in rows}.values())
        columns: dict[str, list[Any]] = {c: [r[c] for r in last] for c, _ in _PG_TYPES}
        columns["reasons"] = [r.get("reasons_json") or json.dumps(r["reasons"]) for r in last]
        for c, kind in _PG_TYPES:
            if kind == "TIMESTAMP[]":
                columns[c] = [None if v is None else naive(v) for v in columns[c]]
            elif kind == "FLOAT8[]":
                columns[c] = [float(v) for v in columns[c]]
        await conn.execute(_PG_UPSERT, columns)
        return
    t = _sqlite_time
    await conn.exec_driver_sql(
        _SQLITE_UPSERT,
        [
            (
                r["customer_id"],
                r["score"],
                r["band"],
                r.get("reasons_json") or json.dumps(r["reasons"]),
                t(r["last_contact_at"]),
                r["rate_fast"],
                r["rate_slow"],
                t(r["rate_at"]),
                int(r["opted_out"]),
                t(r["alerted_at"]),
                r["crossings"],
                t(r["updated_at"]),
            )
            for r in rows
        ],
    )


async def drop_gone(session: AsyncSession, customer_id: int | None = None) -> None:
    """Forgotten and merged customers have no score: their rows go (one, or all of them)."""
    if customer_id is not None:
        await session.execute(
            delete(CustomerHealth).where(CustomerHealth.customer_id == customer_id)
        )
        return
    gone = select(Customer.id).where(
        or_(Customer.forgotten_at.is_not(None), Customer.merged_into.is_not(None))
    )
    await session.execute(delete(CustomerHealth).where(CustomerHealth.customer_id.in_(gone)))


def add_event(session: AsyncSession, event: Event) -> None:
    """A line in the customer's log that is nobody's message (the recompute's churn warning)."""
    interactions.add_event(session, event)
