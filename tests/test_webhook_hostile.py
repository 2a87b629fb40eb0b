"""Hostile webhook input over real HTTP, on SQLite and PostgreSQL: every bad request is a 4xx that
names what is wrong, never a 5xx (a sender retries a 5xx forever), and nothing is half-written."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bot.app import Kefu
from channels.webhook import sign
from tests.servers.kefu import base_config, running_kefu, url

SECRET = "hostile-secret"


@pytest.fixture
async def kefu(db_url: str) -> AsyncIterator[Kefu]:
    config = base_config(db_url, webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET"}}})
    async with running_kefu(config, {"SHOP_SECRET": SECRET}) as k:
        yield k


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def post(
    kefu: Kefu, client: httpx.AsyncClient, body: bytes, **headers: bytes | str
) -> httpx.Response:
    stamp = str(int(time.time()))
    sent: dict[str, bytes | str] = {
        "Content-Type": "application/json",
        "X-Kefu-Timestamp": stamp,
        "X-Kefu-Signature": sign(SECRET, stamp, body),
    }
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    return await client.post(url(kefu, "/webhooks/shop"), content=body, headers=sent)


def message(**fields: Any) -> bytes:
    data: dict[str, Any] = {"id": "m-1", "user": {"id": "u-1"}, "text": "hello"}
    data.update(fields)
    return json.dumps(data).encode()


NOW = int(time.time())  # for cases far outside the window; tests near it read the clock
CASES: dict[str, tuple[bytes, str]] = {
    # name: (body, the field the 422 must name)
    "nested_10000_deep_text": (
        b'{"id": "m", "user": {"id": "u"}, "text": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        "body",
    ),
    "nested_10000_deep_body": (b"[" * 10_000 + b"]" * 10_000, "body"),
    "nested_10000_deep_objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "body"),
    "timestamp_1e20": (message(timestamp=1e20), "timestamp"),
    "timestamp_year_9999": (message(timestamp=253402300799), "timestamp"),
    "timestamp_iso_9999": (message(timestamp="9999-12-31T23:59:59Z"), "timestamp"),
    "timestamp_iso_year_1_east": (message(timestamp="0001-01-01T00:00:00+23:59"), "timestamp"),
    "timestamp_negative": (message(timestamp=-1e300), "timestamp"),
    "timestamp_nan": (message().replace(b'"text"', b'"timestamp": NaN, "text"'), "body"),
    "timestamp_infinity": (message().replace(b'"text"', b'"timestamp": Infinity, "text"'), "body"),
    "timestamp_a_year_off": (message(timestamp=NOW - 365 * 86400), "timestamp"),
    "survey_id_beyond_64_bits": (message(type="survey", survey_id=2**64, score=3), "survey_id"),
    "survey_id_negative_huge": (message(type="survey", survey_id=-(2**70), score=3), "survey_id"),
    "id_of_5000_digits": (
        b'{"id": ' + b"9" * 5000 + b', "user": {"id": "u"}, "text": "x"}',
        "body",
    ),
    "user_id_float": (message(user={"id": 1e300}), "user.id"),
    "text_with_nul": (message(text="a\u0000b"), "text"),
    "text_with_lone_surrogate": (b'{"id": "m", "user": {"id": "u"}, "text": "\\ud800"}', "text"),
    "name_with_lone_surrogate": (
        b'{"id": "m", "user": {"id": "u", "name": "\\udfff"}, "text": "x"}',
        "user.name",
    ),
    "id_with_nul": (message(id="m\u0000"), "id"),
    "body_latin1_bytes": (
        '{"id": "m", "user": {"id": "u"}, "text": "caf\xe9"}'.encode("latin-1"),
        "body",
    ),
    "body_utf16": (message().decode().encode("utf-16"), "body"),
    "attachments_not_a_list": (message(attachments={"url": "x"}), "attachments"),
    "score_huge": (message(type="survey", survey_id=1, score=10**30), "score"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_payloads_are_422_naming_the_field(
    kefu: Kefu, client: httpx.AsyncClient, case: str
) -> None:
    body, field = CASES[case]
    r = await post(kefu, client, body)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert r.json()["error"] == "malformed"
    assert field in r.json()["message"], r.json()["message"]


@pytest.mark.parametrize(
    "signature",
    [b"sha256=\xe9\xe9", "sha256=é".encode(), b"\xff\xfe", b"sha256=" + b"\x80" * 64],
    ids=["latin1", "utf8", "bom", "high_bytes"],
)
async def test_a_non_ascii_signature_is_401(
    kefu: Kefu, client: httpx.AsyncClient, signature: bytes
) -> None:
    r = await post(kefu, client, message(), X_Kefu_Signature=signature)
    assert r.status_code == 401 and r.json()["error"] == "bad_signature"


@pytest.mark.parametrize("stamp", ["１２３", "٣", "1_700_000_000", "+1700000000", "1e9"])
async def test_a_timestamp_header_that_is_not_plain_digits_is_401(
    kefu: Kefu, client: httpx.AsyncClient, stamp: str
) -> None:
    body = message()
    r = await post(
        kefu,
        client,
        body,
        X_Kefu_Timestamp=stamp.encode(),
        X_Kefu_Signature=sign(SECRET, stamp, body),
    )
    assert r.status_code == 401, r.text


async def test_long_fields_at_their_limits_are_stored(
    kefu: Kefu, client: httpx.AsyncClient
) -> None:
    """At each documented limit the message is accepted on either database (PostgreSQL enforces
    column lengths that SQLite ignores)."""
    body = message(
        id="i" * 200,
        user={
            "id": "u" * 200,
            "name": "名" * 200,
            "email": "e" * 310 + "@x.example",
            "language": "zh-Hans-CN-x-abcd"[:16],
        },
        attachments=[
            {"url": "https://x.example/" + "a" * 1980, "name": "n" * 300, "mime_type": "m" * 120}
        ]
        * 20,
    )
    r = await post(kefu, client, body)
    assert r.status_code == 202, r.text


async def test_a_payload_timestamp_inside_the_window_is_kept(
    kefu: Kefu, client: httpx.AsyncClient
) -> None:
    r = await post(kefu, client, message(timestamp=int(time.time()) - 120))
    assert r.status_code == 202, r.text
