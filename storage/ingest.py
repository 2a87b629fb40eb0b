"""The pipeline's batch write: the statements one batch of inbound messages runs.

Dedupe against the log, find or create each sender's customer and identity, find the live
conversations, insert new rows in bulk. The pipeline (bot/pipeline.py) decides what to write;
this module holds how it is read and written, so a batch costs a handful of statements whatever
its size.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    BindParameter,
    Boolean,
    Column,
    Insert,
    Select,
    Table,
    Text,
    TextClause,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy import column as named_column
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import get_history, instance_state, set_committed_value

from bot.lookup import StaffView
from bot.messages import Inbound
from storage import dialect
from storage.models import (
    REOPENABLE,
    Base,
    Conversation,
    Customer,
    Identity,
    Interaction,
    OutboxRow,
    utcnow,
)
from storage.rows import table_of

# The hot path's statements, built once: building a statement and its cache key costs more than
# running it on SQLite. (Key lists stay IN lists on PostgreSQL too: with one array parameter,
# = ANY($1), the plan PostgreSQL caches for the prepared statement after five runs scans the
# whole table - measured 4x the server time of the dedupe read.)
_LOGGED = select(
    Interaction.external_id, Interaction.id, Interaction.customer_id, Interaction.conversation_id
).where(
    Interaction.channel == bindparam("channel"),
    Interaction.external_id.in_(bindparam("keys", expanding=True)),
)
_OWNERS = (
    select(Identity.address, Customer)
    .join(Customer, Customer.id == Identity.customer_id)
    .where(
        Identity.channel == bindparam("channel"),
        Identity.address.in_(bindparam("keys", expanding=True)),
    )
)
# PostgreSQL: the dedupe read (and the senders' read, _SENDERS_PG) probe the unique index once
# per key, whatever the table's size. With a key list (IN or = ANY) the planner prefers a
# sequential scan of a young table (a few thousand rows, all cached), and compares every row with
# every key: 2-2.5 ms of server time per batch read in bench/ingest.py, 10x the probes'. A
# LATERAL subquery with LIMIT 1 per key cannot be turned into a scan and a hash join. One array
# parameter: one statement text and one prepared statement whatever the batch size.
# The dedupe read also brings the active staff (id, name, role, on duty, Telegram id), as one
# JSON value on every row (and on one row of NULLs when no key is logged): the router reads the
# team on duty in every batch that assigns, and so costs no round trip of its own (#16). Read
# afresh in every transaction, so a change of duty (from any process, or by hand in SQL) counts
# from the next batch on; nothing is cached across transactions to invalidate.
_LOGGED_PG = text(
    """
SELECT r.roster, l.external_id, l.id, l.customer_id, l.conversation_id
FROM (
    SELECT CAST(
        json_agg(json_build_array(id, name, role, on_duty, telegram_user_id) ORDER BY id)
        AS TEXT
    ) AS roster
    FROM staff WHERE active
) AS r
LEFT JOIN (
    unnest(CAST(:keys AS TEXT[])) AS k(key)
    CROSS JOIN LATERAL (
        SELECT external_id, id, customer_id, conversation_id FROM interactions
        WHERE channel = :channel AND external_id = k.key LIMIT 1
    ) AS l
) ON true
"""
).bindparams(bindparam("keys", type_=postgresql.ARRAY(Text())), bindparam("channel"))
# session.info key of the roster the dedupe read brought: its JSON as text (the driver would
# decode a json column on every row), parsed when the router asks.
ACTIVE_STAFF = "kefu.ingest.active_staff"
_LIVE = (
    select(Conversation)
    .where(
        Conversation.customer_id.in_(bindparam("customers", expanding=True)),
        Conversation.status.in_(REOPENABLE),
    )
    .order_by(Conversation.id)
)
@functools.cache
def _top_id(table: Table) -> Select[Any]:
    return select(func.max(table.c.id))


@functools.cache
def _insert_into(table: Table) -> Insert:
    return insert(table)


def by_channel(pairs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """One query per channel: SQLite does not use the (channel, key) unique index for a
    row-value IN, but does for channel = ? AND key IN (...)."""
    grouped: dict[str, set[str]] = {}
    for channel, key in pairs:
        grouped.setdefault(channel, set()).add(key)
    return grouped


async def logged(
    session: AsyncSession, channel: str, keys: Sequence[str]
) -> list[tuple[str | None, int, int, int | None]]:
    """(external_id, interaction id, customer id, conversation id) of the keys already logged."""
    if dialect.is_sqlite(session):
        rows = await session.execute(_LOGGED, {"channel": channel, "keys": list(keys)})
        return [tuple(row) for row in rows]  # type: ignore[misc]
    found = []
    for row in await session.execute(_LOGGED_PG, {"channel": channel, "keys": list(keys)}):
        session.info[ACTIVE_STAFF] = row[0]
        if row[2] is not None:
            found.append((row[1], row[2], row[3], row[4]))
    return found


def active_staff(session: AsyncSession) -> list[StaffView] | None:
    """The active staff by id, as this transaction's dedupe read found them (PostgreSQL), or
    None where it did not run."""
    if ACTIVE_STAFF not in session.info:
        return None
    raw = session.info[ACTIVE_STAFF]
    return [
        StaffView(member, name, role, True, on_duty, telegram)
        for member, name, role, on_duty, telegram in (json.loads(raw) if raw else [])
    ]


@dataclass(frozen=True, slots=True)
class Senders:
    """What identify() found: the customers that existed before this batch (on PostgreSQL
    locked by it: see live_conversations)."""

    known: frozenset[int]


async def identify(
    session: AsyncSession, inbounds: Sequence[Inbound]
) -> tuple[dict[tuple[str, str], int], dict[int, Customer], Senders]:
    """Identity(channel, address) -> Customer for every sender, created on first contact.

    Returns (channel, address) -> customer id, the customers by id (in the session), and the
    Senders for live_conversations."""
    if not dialect.is_sqlite(session):
        return await _identify_pg(session, inbounds)
    owner: dict[tuple[str, str], int] = {}
    customers: dict[int, Customer] = {}
    by_address = by_channel((i.channel, i.address) for i in inbounds)
    for channel, addresses in by_address.items():
        found = await session.execute(_OWNERS, {"channel": channel, "keys": sorted(addresses)})
        for address, customer in found:
            owner[(channel, address)] = customer.id
            customers[customer.id] = customer
    senders = Senders(frozenset(customers))
    new_customers: dict[tuple[str, str], Customer] = {}
    for inbound in inbounds:
        key = (inbound.channel, inbound.address)
        if key not in owner and key not in new_customers:
            new_customers[key] = Customer(
                display_name=inbound.display_name, language=inbound.language, tags=[]
            )
    if new_customers:
        await add_objects(session, Customer, list(new_customers.values()))
        now = utcnow()
        fresh: list[dict[str, object]] = [
            {
                "customer_id": c.id,
                "channel": ch,
                "address": addr,
                "reachable": True,
                "created_at": now,
            }
            for (ch, addr), c in new_customers.items()
        ]
        await add_rows(session, Identity, fresh)
    for (channel, address), customer in new_customers.items():
        owner[(channel, address)] = customer.id
        customers[customer.id] = customer
    return owner, customers, senders


async def live_conversations(session: AsyncSession, senders: Senders) -> dict[int, Conversation]:
    """Each sender's latest conversation that a message may join (open, pending, resolved).

    Only customers that existed before the batch can have one: a batch of first contacts reads
    nothing. On PostgreSQL several kefu processes may receive one customer's messages at once:
    the customers are locked first so only one of them opens a conversation; this statement, run
    after the lock is granted, sees what the holder committed. identify() took the locks as it
    read the senders, in the order of their sorted (channel, address) keys (the same in every
    batch and process, so two batches cannot deadlock), a round trip less. (A customer created by
    this transaction is invisible to the others until it commits: another process's copy of its
    first message fails on the identity's unique key and is retried.)"""
    if not senders.known:
        return {}
    rows = await session.scalars(_LIVE, {"customers": list(senders.known)})
    return {c.customer_id: c for c in rows}


def _replied_to(model: type[Interaction] | type[OutboxRow], inbound: Inbound) -> Select[Any]:
    """The conversation of the latest logged (Interaction) or sent (OutboxRow) message that the
    inbound one answers."""
    return (
        select(model.conversation_id)
        .where(
            model.channel == inbound.channel,
            model.external_id.in_(inbound.reply_to),
            model.conversation_id.is_not(None),
        )
        .order_by(model.id.desc())
        .limit(1)
    )


async def named_conversation(
    session: AsyncSession, inbound: Inbound, customer_id: int
) -> Conversation | None:
    """The conversation the message itself names (a reply to a logged or sent message, or the
    channel's hint); only ever one of the sender's own."""
    conversation_id: int | None = None
    if inbound.reply_to:
        conversation_id = await session.scalar(
            _replied_to(Interaction, inbound)
        ) or await session.scalar(_replied_to(OutboxRow, inbound))
    if conversation_id is None:
        conversation_id = inbound.conversation_hint
    if conversation_id is None:
        return None
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None or conversation.customer_id != customer_id:
        return None
    return conversation


async def add_objects(session: AsyncSession, model: type[Base], rows: Sequence[Base]) -> None:
    """Inserts new ORM objects with one executemany and adopts them into the session.

    The unit of work would cost more than the database on this path, and SQLite cannot batch
    INSERT ... RETURNING (SQLAlchemy falls back to one INSERT per row); the adopted objects are
    persistent, so later changes to them still reach the database as UPDATEs.
    """
    if not rows:
        return
    if model is Conversation and not dialect.is_sqlite(session):
        rows = _defer_conversations(session, rows)
        if not rows:
            return
    values = _values_of(model, rows)
    _adopt(session, rows, values, await add_rows(session, model, values))


# session.info keys: conversation ids identify() drew for new customers, by customer id, and the
# new conversations that hold them, to be written by log_lines.
_RESERVED = "kefu.ingest.reserved_conversations"
_DEFERRED = "kefu.ingest.deferred_conversations"


def _defer_conversations(session: AsyncSession, rows: Sequence[Base]) -> list[Base]:
    """PostgreSQL: a new customer's new conversation takes the id identify() drew for it and is
    written by log_lines, with the batch's lines and with the state the batch gave it: a round
    trip less than an INSERT of its own, and no UPDATE of it after. Until then it is no row and
    not in the session (nothing can flush it); its columns hold their defaults, as an inserted
    one's would. Returns the rows still to insert now (other customers' conversations)."""
    reserved: dict[int, int] = session.info.get(_RESERVED, {})
    deferred: list[Base] = session.info.setdefault(_DEFERRED, [])
    now: list[Base] = []
    for row in rows:
        customer_id = row.__dict__.get("customer_id")
        if customer_id not in reserved:
            now.append(row)
            continue
        [value] = _values_of(Conversation, [row])
        row.__dict__.update(value, id=reserved.pop(customer_id))
        deferred.append(row)
    return now


def _values_of(model: type[Base], rows: Sequence[Base]) -> list[dict[str, object]]:
    """Every column but the id of each new object, defaults filled in."""
    columns = [c for c in table_of(model).columns if c.key != "id"]
    values = []
    for row in rows:
        given = row.__dict__
        value: dict[str, object] = {}
        for column in columns:
            v = given.get(column.key)
            if v is None and column.default is not None:
                # Every default on these models is a ColumnDefault (a value or a callable), which
                # has .arg; the stubs type column.default as any DefaultGenerator.
                default = column.default
                v = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
            value[column.key] = v
        values.append(value)
    return values


def _adopt(
    session: AsyncSession,
    rows: Sequence[Base],
    values: list[dict[str, object]],
    ids: Sequence[int],
) -> None:
    for row, value, new_id in zip(rows, values, ids, strict=True):
        # Written into the instance directly, every column included: the object now holds what
        # the row holds, with no history to flush (a setattr per column would record each as a
        # change, and a column left out would come back expired, to be loaded by IO outside
        # the async bridge: MissingGreenlet).
        row.__dict__.update(value, id=new_id)
        make_transient_to_detached(row)
        session.add(row)


# PostgreSQL: the senders' customers, found or created, in one statement of one fixed text
# (one round trip, where a read and then an INSERT of the first contacts took two, #16).
# `found`: one probe of the identities' unique index per sender (see _KEYS_PG), each customer
# locked as it is read, in the order of the sorted (channel, address) keys: the same in every
# batch and process, so two batches cannot deadlock (see live_conversations). `wanted`: the
# others, each new customer's id drawn once per key (a CTE read twice is computed once), so the
# pairing of customer and identity does not depend on any order; `made` returns the new
# customers' rows as stored. A customer known under two of the batch's identities comes twice.
# Each new customer also gets the id of the conversation their first message will open
# (add_objects: written with the batch's log lines; unused if they only sent events).
_SENDERS_PG = (
    text(
        """
WITH k AS MATERIALIZED (
    SELECT * FROM unnest(CAST(:channels AS TEXT[]), CAST(:addresses AS TEXT[]),
                         CAST(:names AS TEXT[]), CAST(:languages AS TEXT[]))
         AS k(channel, address, display_name, language)
), found AS MATERIALIZED (
    SELECT k.channel, k.address, o.*
    FROM k CROSS JOIN LATERAL (
        SELECT customers.* FROM identities JOIN customers ON customers.id = identities.customer_id
        WHERE identities.channel = k.channel AND identities.address = k.address
        LIMIT 1 FOR UPDATE OF customers
    ) AS o
), wanted AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('customers', 'id')) AS id,
           nextval(pg_get_serial_sequence('conversations', 'id')) AS conversation, k.*
    FROM k WHERE NOT EXISTS (
        SELECT FROM found WHERE found.channel = k.channel AND found.address = k.address
    )
), made AS (
    INSERT INTO customers (id, display_name, language, tags, vip, marketing_consent, created_at)
    SELECT id, display_name, language, CAST('[]' AS JSON), false, false, :now FROM wanted
    RETURNING *
), named AS (
    INSERT INTO identities (customer_id, channel, address, reachable, created_at)
    SELECT id, channel, address, true, :now FROM wanted
)
SELECT CAST(NULL AS BIGINT) AS conversation, channel, address, {columns} FROM found
UNION ALL
SELECT wanted.conversation, wanted.channel, wanted.address, {made_columns}
FROM made JOIN wanted ON wanted.id = made.id
""".format(
            columns=", ".join(c.name for c in table_of(Customer).columns),
            made_columns=", ".join(f"made.{c.name}" for c in table_of(Customer).columns),
        )
    )
    .bindparams(bindparam("now", type_=table_of(Identity).c.created_at.type))
    .columns(
        named_column("conversation", BigInteger()),
        named_column("channel", Text()),
        named_column("address", Text()),
        *table_of(Customer).columns,
    )
)
_SENDER_ROWS_PG = select(
    _SENDERS_PG.selected_columns.conversation,
    _SENDERS_PG.selected_columns.channel,
    _SENDERS_PG.selected_columns.address,
    Customer,
).from_statement(_SENDERS_PG)


async def _identify_pg(
    session: AsyncSession, inbounds: Sequence[Inbound]
) -> tuple[dict[tuple[str, str], int], dict[int, Customer], Senders]:
    """identify() on PostgreSQL: _SENDERS_PG. Every known sender is locked by it, whatever the
    channels: live_conversations needs no lock of its own."""
    first: dict[tuple[str, str], Inbound] = {}
    for inbound in inbounds:
        first.setdefault((inbound.channel, inbound.address), inbound)
    keys = sorted(first)
    owner: dict[tuple[str, str], int] = {}
    customers: dict[int, Customer] = {}
    known: set[int] = set()
    reserved: dict[int, int] = session.info.setdefault(_RESERVED, {})
    for attempt in range(3):
        rows = await session.execute(
            _SENDER_ROWS_PG,
            {
                "channels": [channel for channel, _ in keys],
                "addresses": [address for _, address in keys],
                "names": [first[key].display_name for key in keys],
                "languages": [first[key].language for key in keys],
                "now": utcnow(),
            },
        )
        moved: list[tuple[str, str]] = []
        for conversation, channel, address, customer in rows:
            if attempt < 2 and (
                customer.merged_into is not None or customer.forgotten_at is not None
            ):
                # A merge or forget committed while this statement waited for the customer's
                # lock: the lock brings the customer as it is now, the identity as it was (moved
                # or deleted since). Read those senders again, as they are now (#16).
                moved.append((channel, address))
                continue
            owner[(channel, address)] = customer.id
            customers[customer.id] = customer
            if conversation is None:
                known.add(customer.id)
            else:
                reserved[customer.id] = conversation
        if not moved:
            break
        keys = sorted(moved)
    return owner, customers, Senders(frozenset(known))


async def add_rows(
    session: AsyncSession, model: type[Base], rows: list[dict[str, object]]
) -> list[int]:
    """Core executemany; returns the new ids in order.

    On SQLite kefu numbers the rows itself: every write transaction there starts with BEGIN
    IMMEDIATE and so holds the database's only write lock while it counts.
    """
    if not rows:
        return []
    table = table_of(model)
    if dialect.is_sqlite(session):
        await session.flush()
        with session.no_autoflush:
            top = (await session.scalar(_top_id(table))) or 0
        ids = list(range(top + 1, top + 1 + len(rows)))
        await session.execute(
            _insert_into(table), [{"id": i, **r} for i, r in zip(ids, rows, strict=True)]
        )
        return ids
    statement, columns = _insert_unnest_pg(table)
    result = await session.execute(statement, _arrays(columns, rows))
    return list(result.scalars())


@functools.cache
def _insert_unnest_pg(table: Table) -> tuple[TextClause, list[Column[Any]]]:
    """PostgreSQL: n rows in one statement of one fixed text whatever n, one array per column
    (an executemany runs the INSERT once per row on the server and is prepared again for every
    batch size SQLAlchemy groups its VALUES by). Each row's id is drawn once in `w` (a CTE read
    twice is computed once) and the ids come back in the rows' order. A JSON value travels as
    its text (in an array, a list would be read as a dimension of the array)."""
    sql, columns, binds = _unnest_parts(table)
    return text(sql).bindparams(*binds), columns


def _unnest_parts(table: Table) -> tuple[str, list[Column[Any]], list[BindParameter[Any]]]:
    columns = [c for c in table.columns if c.key != "id"]
    assert all(c.server_default is None for c in columns), table.name  # no NULL in its place
    dialect_ = postgresql.dialect()  # type: ignore[no-untyped-call]
    arrays: list[str] = []
    selected: list[str] = []
    binds: list[BindParameter[Any]] = []
    for n, c in enumerate(columns):
        is_json = isinstance(c.type, JSON)
        kind = Text() if is_json else c.type
        arrays.append(f"CAST(:c{n} AS {kind.compile(dialect=dialect_)}[])")
        selected.append(f"CAST({c.name} AS JSON)" if is_json else c.name)
        binds.append(bindparam(f"c{n}", type_=postgresql.ARRAY(kind)))
    names = ", ".join(c.name for c in columns)
    sql = (
        f"WITH w AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('{table.name}', 'id'))"
        f" AS id, w.* FROM unnest({', '.join(arrays)}) WITH ORDINALITY AS w({names}, n)),"
        f" made AS (INSERT INTO {table.name} (id, {names}) SELECT id, {', '.join(selected)}"
        " FROM w) SELECT id FROM w ORDER BY n"
    )
    return sql, columns, binds

async def log_lines(session: AsyncSession, rows: list[dict[str, object]]) -> list[int]:
    """The batch's log lines (Interaction rows, as add_rows takes them); returns their ids.

    On PostgreSQL the conversations the batch changed (the session's, changed in place by the
    pipeline: reply address, last update, priority, team, assignee, due times) are written by the
    same statement: one round trip, and one UPDATE over arrays instead of one per conversation,
    which the session's flush sends (#16). Only the columns that changed in a conversation are
    written, as the flush writes them. On SQLite the session flushes them, as before."""
    if dialect.is_sqlite(session):
        return await add_rows(session, Interaction, rows)
    deferred: list[Conversation] = session.info.pop(_DEFERRED, [])
    changed = _changed_conversations(session)
    if not changed and not deferred:
        return await add_rows(session, Interaction, rows)
    columns = tuple(sorted({key for _, keys in changed for key in keys}))
    params: dict[str, list[object]] = {"ids": [c.id for c, _ in changed]}
    for n, key in enumerate(columns):
        params[f"v{n}"] = [getattr(c, key) for c, _ in changed]
        params[f"m{n}"] = [key in keys for _, keys in changed]
    for conversation, keys in changed:
        # Written below: the session holds them as the row will, with nothing left to flush.
        for key in keys:
            set_committed_value(conversation, key, getattr(conversation, key))
    await session.flush()  # anything else pending (an event line) keeps its place in the log
    statement, arrays, opened = _log_and_touch_pg(columns, bool(deferred))
    params.update(_arrays(arrays, rows))
    for n, column in enumerate(opened):
        params[f"k{n}"] = [c.__dict__.get(column.key) for c in deferred]
    with session.no_autoflush:
        result = await session.execute(statement, params)
    ids = list(result.scalars())
    for conversation in deferred:
        # Now a row, holding what the object holds: persistent, with nothing to flush.
        make_transient_to_detached(conversation)
        session.add(conversation)
    return ids


# The conversation columns the pipeline may change in a batch, by the flush's rules: a column is
# written where its history says it changed.
_CONVERSATION_COLUMNS = frozenset(c.key for c in table_of(Conversation).columns if c.key != "id")


def _changed_conversations(session: AsyncSession) -> list[tuple[Conversation, frozenset[str]]]:
    found = []
    for instance in session.dirty:
        if type(instance) is not Conversation:
            continue
        # Only the attributes set since the last flush can have changed (the state keeps their
        # old values): asking every column's history took 7% of kefu's CPU in the bench.
        keys = frozenset(
            key
            for key in instance_state(instance).committed_state
            if key in _CONVERSATION_COLUMNS and get_history(instance, key).has_changes()
        )
        if keys:
            found.append((instance, keys))
    return found


def _arrays(columns: list[Column[Any]], rows: list[dict[str, object]]) -> dict[str, list[object]]:
    """add_rows' arrays on PostgreSQL: one per column, c0, c1, ..."""
    arrays: dict[str, list[object]] = {}
    for n, column in enumerate(columns):
        # A column a row leaves out gets the model's default, as an executemany would give it.
        default = column.default
        values = [
            row.get(column.key)
            if column.key in row or default is None
            else default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
            for row in rows
        ]
        # SQLAlchemy's JSON type writes None as JSON null too (none_as_null is off).
        arrays[f"c{n}"] = (
            [json.dumps(v) for v in values] if isinstance(column.type, JSON) else values
        )
    return arrays


@functools.cache
def _log_and_touch_pg(
    changed: tuple[str, ...], opening: bool
) -> tuple[TextClause, list[Column[Any]], list[Column[Any]]]:
    """_insert_unnest_pg's INSERT of log lines, with an UPDATE of the conversations in a CTE
    (and with `opening`, an INSERT of the new ones, ids given: the lines' foreign keys are checked
    at the end of the statement, when both are written). Each conversation to update is found by
    its id with the primary key's index: `= ANY(ids)` as well as the join, so the planner does not
    hash a scan of the table for a few rows. Returns the statement, the lines' columns (c0, ...)
    and the new conversations' (k0, ...)."""
    insert_sql, columns, binds = _unnest_parts(table_of(Interaction))
    table = table_of(Conversation)
    dialect_ = postgresql.dialect()  # type: ignore[no-untyped-call]
    opened = list(table.columns) if opening else []
    if opened:
        assert all(c.server_default is None for c in opened)
        kinds = ", ".join(f"CAST(:k{n} AS {c.type.compile(dialect=dialect_)}[])" for n, c in
                          enumerate(opened))
        names_ = ", ".join(c.name for c in opened)
        insert_sql = insert_sql.replace(
            " made AS (",
            f" opened AS (INSERT INTO conversations ({names_}) SELECT * FROM unnest({kinds})),"
            " made AS (",
        )
        binds += [
            bindparam(f"k{n}", type_=postgresql.ARRAY(c.type)) for n, c in enumerate(opened)
        ]
    arrays = ["CAST(:ids AS BIGINT[])"]
    names = ["id"]
    sets = []
    for n, key in enumerate(changed):
        kind = table.c[key].type
        arrays += [
            f"CAST(:v{n} AS {kind.compile(dialect=dialect_)}[])",
            f"CAST(:m{n} AS BOOLEAN[])",
        ]
        names += [f"v{n}", f"m{n}"]
        sets.append(f"{key} = CASE WHEN u.m{n} THEN u.v{n} ELSE c.{key} END")
        binds += [
            bindparam(f"v{n}", type_=postgresql.ARRAY(kind)),
            bindparam(f"m{n}", type_=postgresql.ARRAY(Boolean())),
        ]
    binds.append(bindparam("ids", type_=postgresql.ARRAY(BigInteger())))
    sql = insert_sql
    if sets:
        sql = sql.replace(
            " SELECT id FROM w ORDER BY n",
            f", touched AS (UPDATE conversations AS c SET {', '.join(sets)}"
            f" FROM unnest({', '.join(arrays)}) AS u({', '.join(names)})"
            " WHERE c.id = u.id AND c.id = ANY(CAST(:ids AS BIGINT[])))"
            " SELECT id FROM w ORDER BY n",
        )
    else:
        binds.pop()  # no :ids
    return text(sql).bindparams(*binds), columns, opened
