"""Property: no request to POST /webhooks/{source} gets a 5xx, and the server stays healthy.

Hypothesis generates hostile requests (deep nesting, huge and non-finite numbers, bad encodings
in every header and field, lone surrogates and NULs, bodies of exactly and just over the size
limit, chunked bodies, most of them correctly signed so they reach the parser) and sends them
over one keep-alive connection to a real kefu running in a thread. 10,000 requests on SQLite,
1,000 on PostgreSQL (the accepted ones reach the database, whose limits differ).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bot.app import Kefu
from channels.webhook import sign
from tests.servers.kefu import base_config, running_kefu, url

SECRET = "fuzz-secret"
LIMIT = 64 * 1024
PER_EXAMPLE = 10
REQUESTS = {"sqlite": 10_000, "postgres": 1_000}
if __import__("os").environ.get("FUZZ_SMALL"):
    REQUESTS = {"sqlite": 500, "postgres": 200}


class ServerThread:
    """A real kefu serving from its own event loop, so hypothesis can drive it synchronously."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.kefu: Kefu | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with running_kefu(self.config, {"SHOP_SECRET": SECRET}) as kefu:
            self.kefu = kefu
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Kefu:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None or self.kefu is None:
            raise RuntimeError(f"kefu did not start: {self._error!r}")
        return self.kefu

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


# --- what a hostile sender puts in a request ------------------------------------------------


def _header_safe(raw: bytes) -> bytes:
    """Any bytes a header value can carry on the wire (RFC 9110 5.5: visible ASCII, space, tab
    and obs-text 0x80-0xFF; no other control bytes; surrounding whitespace is not part of it)."""
    return bytes(b for b in raw if b == 9 or (b >= 0x20 and b != 0x7F)).strip(b" \t")


weird_text = st.one_of(
    st.text(max_size=50),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Co", "Cn"]), max_size=10),
    st.sampled_from(
        ["", " ", "\u0000", "\ud800", "\udfff", "李雷", "\u202e", "a" * 201, "9" * 300]
    ),
)
huge_numbers = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**4299, 1e20, 253402300799, -1e300, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
timestamps = st.one_of(
    huge_numbers,
    st.sampled_from(
        [
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+23:59",
            "0001-01-01",
            "2027-02-30T00:00:00",
            "1970-01-01T00:00:00-24:00",
            "now",
            "",
            "1e20",
            "NaN",
            "253402300799",
        ]
    ),
    st.datetimes().map(lambda d: d.isoformat()),
    st.builds(lambda: int(time.time())),
)
scalars = st.one_of(st.none(), st.booleans(), huge_numbers, weird_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(weird_text, children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """A message object with each field sometimes right, sometimes hostile."""

    def maybe(good: Any, bad: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(st.just(good), bad, json_values))

    data: dict[str, Any] = {}
    fields = {
        "id": maybe(f"m-{draw(st.integers(0, 10**9))}", st.one_of(huge_numbers, weird_text)),
        "user": maybe(
            {
                "id": draw(st.one_of(weird_text, huge_numbers)),
                "name": draw(weird_text),
                "email": draw(weird_text),
                "language": draw(weird_text),
            },
            st.one_of(weird_text, huge_numbers),
        ),
        "text": maybe("hello", weird_text),
        "attachments": maybe(
            [{"url": draw(weird_text), "name": draw(weird_text), "mime_type": draw(weird_text)}],
            st.lists(json_values, max_size=25),
        ),
        "timestamp": draw(timestamps),
        "type": draw(st.sampled_from(["message", "complaint", "survey", "other", "", None])),
        "survey_id": draw(st.one_of(huge_numbers, st.integers(1, 10))),
        "score": draw(st.one_of(huge_numbers, st.integers(0, 6))),
        "comment": draw(weird_text),
    }
    keep = draw(st.sets(st.sampled_from(sorted(fields))))
    for name in sorted(keep | {"id", "user", "text"}):
        data[name] = fields[name]
    return data


def _dump(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=True).encode()
    except (ValueError, OverflowError):
        return json.dumps(str(value)[:100]).encode()


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 20_000))
    kind = draw(st.sampled_from(["list", "object", "in_text", "in_extra"]))
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    inner = b"[" * depth + b"]" * depth
    if kind == "in_text":
        return b'{"id": "n", "user": {"id": "u"}, "text": ' + inner + b"}"
    return b'{"id": "n", "user": {"id": "u"}, "text": "x", "extra": ' + inner + b"}"


@st.composite
def sized(draw: st.DrawFn) -> bytes:
    """A valid message padded to exactly the limit, or just over it."""
    over = draw(st.sampled_from([-1, 0, 1, 1000]))
    head = b'{"id": "s-%d", "user": {"id": "u"}, "text": "' % draw(st.integers(0, 10**9))
    filler = LIMIT + over - len(head) - 2
    return head + b"x" * max(filler, 0) + b'"}'


encodings = st.sampled_from(
    ["utf-8", "utf-8", "utf-8", "utf-16", "utf-32", "latin-1", "gb18030", "cp1252"]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["payload", "payload", "payload", "nested", "sized", "binary", "json"])
    )
    if kind == "nested":
        return draw(nested())
    if kind == "sized":
        return draw(sized())
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return _dump(draw(json_values))
    data = draw(payloads())
    try:
        text = json.dumps(data, ensure_ascii=draw(st.booleans()))
    except (ValueError, OverflowError):
        text = json.dumps(str(data)[:100])
    try:
        return text.encode(draw(encodings), errors="surrogatepass")
    except (UnicodeEncodeError, LookupError):
        return text.encode("utf-8", errors="surrogatepass")


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, bytes], bytes, bool]:
    body = draw(bodies())
    stamp = str(int(time.time()))
    headers: dict[str, bytes] = {
        "Content-Type": b"application/json",
        "X-Kefu-Timestamp": stamp.encode(),
        "X-Kefu-Signature": sign(SECRET, stamp, body).encode(),
    }
    for name in (
        "X-Kefu-Timestamp",
        "X-Kefu-Signature",
        "Content-Type",
        "Idempotency-Key",
        "User-Agent",
    ):
        if draw(st.integers(0, 24)) == 0:  # one header in 25 is hostile
            headers[name] = _header_safe(draw(st.binary(max_size=80)))
    if draw(st.integers(0, 19)) == 0:
        # a signature computed over a hostile timestamp, so the timestamp check itself is reached
        raw = _header_safe(draw(st.binary(min_size=1, max_size=20)))
        headers["X-Kefu-Timestamp"] = raw
        headers["X-Kefu-Signature"] = sign(SECRET, raw.decode("latin-1"), body).encode(
            "latin-1", "replace"
        )
    source = (
        "shop"
        if draw(st.integers(0, 9))
        else draw(st.sampled_from(["nope", "sh%00op", "%E2%80%AE", "a" * 300]))
    )
    chunked = draw(st.integers(0, 4)) == 0
    return source, {k: v for k, v in headers.items() if v}, body, chunked


def _chunks(body: bytes, size: int) -> Iterator[bytes]:
    for n in range(0, len(body), size):
        yield body[n : n + size]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    return "postgres", request.getfixturevalue("postgres").create_database()


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_no_request_gets_a_5xx_and_the_server_stays_healthy(backend: tuple[str, str]) -> None:
    name, db_url = backend
    config = base_config(db_url, webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET"}}})
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    with ServerThread(config) as kefu, httpx.Client(timeout=60) as client:

        @settings(
            max_examples=REQUESTS[name] // PER_EXAMPLE,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],  # every request is sent; a 5xx is reported, not shrunk
        )
        @given(st.lists(requests(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
        def batch(reqs: list[tuple[str, dict[str, bytes], bytes, bool]]) -> None:
            for source, headers, body, chunked in reqs:
                content: bytes | Iterator[bytes] = _chunks(body, 4096) if chunked else body
                r = client.post(url(kefu, f"/webhooks/{source}"), content=content, headers=headers)
                statuses[r.status_code] += 1
                if r.status_code >= 500 or not r.headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    failures.append(
                        f"{r.status_code} {r.text[:200]!r} for {body[:120]!r} {headers}"
                    )

        batch()
        health = client.get(url(kefu, "/healthz"))
    print(f"\n{name}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert not failures, failures[:5]
    assert sum(statuses.values()) >= REQUESTS[name]
    assert statuses[202] > 0 and statuses[422] > 0 and statuses[401] > 0 and statuses[413] > 0
    assert health.status_code == 200 and health.json()["status"] == "ok"
