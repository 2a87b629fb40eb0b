"""POST /webhooks/{source} over real HTTP against a running kefu."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from bot.app import Kefu
from storage.models import Customer, Interaction
from tests.servers.kefu import base_config, post_signed, running_kefu, signed, url

SECRET = "test-secret-9f2c"
FIXTURES = Path(__file__).parent / "fixtures" / "webhook"


@pytest.fixture
async def kefu(db_url: str) -> AsyncIterator[Kefu]:
    config = base_config(
        db_url,  # SQLite and PostgreSQL
        webhook={
            "sources": {"shop": {"secret_env": "SHOP_SECRET"}, "crm": {"secret_env": "CRM_SECRET"}}
        },
    )
    async with running_kefu(config, {"SHOP_SECRET": SECRET}) as k:
        yield k


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def payload(n: int | str = 1, user: str = "u-1", **extra: object) -> dict[str, object]:
    return {"id": f"m-{n}", "user": {"id": user, "name": "李雷"}, "text": "包裹还没到", **extra}


async def logged(kefu: Kefu) -> int:
    """Customer messages in the log (a complaint also logs its acknowledgement and staff flag)."""
    async with kefu.db.sessions() as s:
        query = select(func.count()).select_from(Interaction).where(Interaction.direction == "in")
        return int(await s.scalar(query) or 0)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("message__*.json")))
async def test_fixture_payloads_are_accepted(
    kefu: Kefu, client: httpx.AsyncClient, fixture: str
) -> None:
    body = (FIXTURES / fixture).read_bytes()
    data = json.loads(body)
    # Posted as it was sent, at the time it carries: a payload timestamp must lie within the
    # signature window of the signed one.
    stamp = data.get("timestamp")
    sent_at = (
        int(datetime.fromisoformat(stamp).timestamp()) if isinstance(stamp, str)
        else int(stamp) if stamp is not None else int(time.time())
    )
    clock, kefu.webhook.clock = kefu.webhook.clock, lambda: float(sent_at)
    try:
        r = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, body, ts=sent_at)
    finally:
        kefu.webhook.clock = clock
    assert r.status_code == 202, r.text
    async with kefu.db.sessions() as s:
        row = await s.get(Interaction, r.json()["interaction_id"])
    assert row is not None and row.text == data["text"] and row.external_id == f"shop:{data['id']}"


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("malformed__*.json")))
async def test_malformed_fixtures_get_422(
    kefu: Kefu, client: httpx.AsyncClient, fixture: str
) -> None:
    r = await post_signed(
        client, url(kefu, "/webhooks/shop"), SECRET, (FIXTURES / fixture).read_bytes()
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "malformed" and r.json()["message"]
    assert await logged(kefu) == 0


async def test_accept_then_duplicate(kefu: Kefu, client: httpx.AsyncClient) -> None:
    first = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, payload())
    again = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, payload())
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["status"] == "accepted" and again.json()["status"] == "duplicate"
    assert again.json()["interaction_id"] == first.json()["interaction_id"]
    assert await logged(kefu) == 1


async def test_hundred_concurrent_posts_of_one_id_log_once(
    kefu: Kefu, client: httpx.AsyncClient
) -> None:
    responses = await asyncio.gather(
        *(
            post_signed(client, url(kefu, "/webhooks/shop"), SECRET, payload("same"))
            for _ in range(100)
        )
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 99 + [202]
    assert len({r.json()["interaction_id"] for r in responses}) == 1
    assert await logged(kefu) == 1


async def test_same_user_same_customer_same_conversation(
    kefu: Kefu, client: httpx.AsyncClient
) -> None:
    a = (await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, payload(1))).json()
    b = (await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, payload(2))).json()
    c = (
        await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, payload(3, user="u-2"))
    ).json()
    assert a["conversation_id"] == b["conversation_id"] != c["conversation_id"]
    async with kefu.db.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Customer)) == 2


@pytest.mark.parametrize(
    "case",
    ["missing", "wrong_secret", "stale", "future", "tampered", "not_a_number", "bare_hex"],
)
async def test_bad_signatures_are_401(kefu: Kefu, client: httpx.AsyncClient, case: str) -> None:
    body, headers = signed(SECRET, payload())
    if case == "missing":
        headers = {"Content-Type": "application/json"}
    elif case == "wrong_secret":
        body, headers = signed("not-the-secret", payload())
    elif case == "stale":
        body, headers = signed(SECRET, payload(), ts=int(time.time()) - 400)
    elif case == "future":
        body, headers = signed(SECRET, payload(), ts=int(time.time()) + 400)
    elif case == "tampered":
        body = body.replace("包裹".encode(), "退款".encode())
    elif case == "not_a_number":
        headers["X-Kefu-Timestamp"] = "yesterday"
    elif case == "bare_hex":
        headers["X-Kefu-Signature"] = headers["X-Kefu-Signature"].removeprefix("sha256=")
    r = await client.post(url(kefu, "/webhooks/shop"), content=body, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "bad_signature" and r.json()["message"]
    assert await logged(kefu) == 0


async def test_timestamp_inside_the_window_is_fine(kefu: Kefu, client: httpx.AsyncClient) -> None:
    r = await post_signed(
        client, url(kefu, "/webhooks/shop"), SECRET, payload(), ts=int(time.time()) - 290
    )
    assert r.status_code == 202


async def test_unknown_and_disabled_sources_are_404(kefu: Kefu, client: httpx.AsyncClient) -> None:
    unknown = await post_signed(client, url(kefu, "/webhooks/nope"), SECRET, payload())
    disabled = await post_signed(client, url(kefu, "/webhooks/crm"), SECRET, payload())
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_source"
    assert disabled.status_code == 404 and disabled.json()["error"] == "source_disabled"
    assert "CRM_SECRET" in disabled.json()["message"]


async def test_oversized_body_is_413_declared_or_streamed(
    kefu: Kefu, client: httpx.AsyncClient
) -> None:
    big = payload(text="x" * (64 * 1024))
    r = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, big)
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    body, headers = signed(SECRET, big)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    r = await client.post(url(kefu, "/webhooks/shop"), content=chunks(), headers=headers)
    assert r.status_code == 413
    assert await logged(kefu) == 0


async def test_exactly_64_kib_is_accepted(kefu: Kefu, client: httpx.AsyncClient) -> None:
    base = json.dumps(payload(text=""), ensure_ascii=False).encode()
    body = json.dumps(payload(text="y" * (64 * 1024 - len(base))), ensure_ascii=False).encode()
    assert len(body) == 64 * 1024
    r = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, body)
    assert r.status_code == 202, r.text


async def test_healthz_and_metrics(kefu: Kefu, client: httpx.AsyncClient) -> None:
    # A question, not a complaint: no acknowledgement sits in the outbox while metrics are read.
    question = payload(text="请问几点营业？")
    await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, question)
    await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, question)
    health = await client.get(url(kefu, "/healthz"))
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["database"] == "ok"
    metrics = await client.get(url(kefu, "/metrics"))
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'kefu_inbound_messages_total{channel="webhook",result="accepted"} 1.0' in text
    assert 'kefu_inbound_messages_total{channel="webhook",result="duplicate"} 1.0' in text
    assert 'kefu_outbox_depth{status="pending"} 0.0' in text
    assert 'kefu_receive_seconds_count{channel="webhook"} 2.0' in text
