"""Anyone can write any From: a forged "退订" leaves consent as it was; one whose domain is
authenticated (the receiving server's DMARC/DKIM verdict, or a DKIM signature kefu verifies
itself) withdraws it. Unauthenticated mail is still logged."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select

from bot.app import Kefu
from bot.messages import Inbound
from channels.mail_auth import AuthSettings, authenticate, from_results
from storage.lookup import SessionLookup
from storage.models import Customer, Interaction, OutboxRow
from tests.channels.email_fixtures import (
    Mailbox,
    dovecot,  # noqa: F401 - pytest fixture
    email_config,
    env_for,
    mailbox,  # noqa: F401 - pytest fixture
    wait_connected,
    wait_for,
)
from tests.servers.kefu import running_kefu
from tests.servers.ports import free_port

MX = "mx.kefu.test"
SELECTOR = b"s2026"


@dataclasses.dataclass
class Key:
    private: bytes
    txt: bytes  # the DNS TXT record that publishes the public key

    def dns(self, domain: bytes) -> Any:
        def lookup(name: bytes, timeout: int = 5) -> bytes | None:
            return self.txt if name == SELECTOR + b"._domainkey." + domain + b"." else None

        return lookup


def make_key(tmp: Path, name: str) -> Key:
    private = tmp / f"{name}.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return Key(private.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Key, Key]]:
    tmp = tmp_path_factory.mktemp("dkim")
    yield make_key(tmp, "good"), make_key(tmp, "other")


def opt_out(sender: str, n: int, *, headers: str = "") -> bytes:
    return (
        f"{headers}From: <{sender}>\r\nTo: support@kefu.test\r\nSubject: =?UTF-8?B?6YCA6K6i?=\r\n"
        f"Message-ID: <optout-{n}@{sender.split('@')[1]}>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "退订\r\n"
    ).encode()


def signed(raw: bytes, key: Key, domain: bytes) -> bytes:
    signature = dkim.sign(
        raw,
        SELECTOR,
        domain,
        key.private,
        include_headers=[b"from", b"subject", b"message-id", b"to"],
    )
    return signature + raw


async def customer_with_consent(kefu: Kefu, address: str) -> int:
    receipt = await kefu.receive(Inbound("email", f"first-{address}", address, "hello"))
    async with kefu.db.transaction() as session:
        customer = await session.get(Customer, receipt.customer_id)
        assert customer is not None
        customer.marketing_consent = True
    assert receipt.customer_id is not None
    return receipt.customer_id


async def consent(kefu: Kefu, customer_id: int) -> bool:
    async with kefu.db.sessions() as session:
        customer = await session.get(Customer, customer_id)
        assert customer is not None
        return customer.marketing_consent


async def confirmations(kefu: Kefu) -> list[OutboxRow]:
    async with kefu.db.sessions() as session:
        return list(
            await session.scalars(select(OutboxRow).where(OutboxRow.dedupe_key.like("optout:%")))
        )


def auth_config(tmp_path: Path, box: Mailbox) -> dict[str, Any]:
    return email_config(tmp_path, box, free_port(), authserv_id=MX)


async def test_a_forged_opt_out_leaves_consent_and_an_authenticated_one_withdraws_it(
    mailbox: Mailbox, tmp_path: Path, keys: tuple[Key, Key]  # noqa: F811
) -> None:
    good, other = keys
    async with running_kefu(auth_config(tmp_path, mailbox), env_for(mailbox)) as kefu:
        channel = kefu.channels["email"]
        channel.auth = dataclasses.replace(channel.auth, dns=good.dns(b"example.org"))  # type: ignore[attr-defined]
        await wait_connected(kefu)
        alice = await customer_with_consent(kefu, "alice@example.org")
        bob = await customer_with_consent(kefu, "bob@example.org")
        carol = await customer_with_consent(kefu, "carol@example.org")
        forged = [
            opt_out("alice@example.org", 1),  # nothing vouches for it
            # a verdict from a server the operator does not trust
            opt_out(
                "alice@example.org",
                2,
                headers="Authentication-Results: evil.example; dmarc=pass header.from=example.org\r\n",
            ),
            # the trusted server, but a failed check or another domain
            opt_out(
                "alice@example.org",
                3,
                headers=f"Authentication-Results: {MX}; dmarc=fail header.from=example.org\r\n",
            ),
            opt_out(
                "alice@example.org",
                4,
                headers=f"Authentication-Results: {MX}; dkim=pass header.d=attacker.example\r\n",
            ),
            # signed with a key that is not the one the domain publishes
            signed(opt_out("alice@example.org", 5), other, b"example.org"),
        ]
        await mailbox.append(*forged)
        found = await wait_for(
            kefu,
            lambda r: sum(x.meta.get("kind") == "consent_unverified" for x in r) == 5,
            timeout=15,
        )
        assert await consent(kefu, alice) is True
        assert await confirmations(kefu) == []
        logged = [x for x in found if x.external_id and x.external_id.startswith("optout-")]
        assert len(logged) == 5 and all(x.text == "退订" for x in logged)  # still in the log
        # Authenticated: the receiving server's DMARC pass, and a signature kefu checks itself.
        await mailbox.append(
            opt_out(
                "bob@example.org",
                6,
                headers=f"Authentication-Results: {MX};\r\n\tdkim=pass header.d=example.org;\r\n\tdmarc=pass (p=reject) header.from=example.org\r\n",
            ),
            signed(opt_out("carol@example.org", 7), good, b"example.org"),
        )
        deadline = time.monotonic() + 10
        while len(await confirmations(kefu)) < 2:
            assert time.monotonic() < deadline, "the authenticated opt-outs were not applied"
            await __import__("asyncio").sleep(0.05)
        assert await consent(kefu, bob) is False and await consent(kefu, carol) is False
        assert await consent(kefu, alice) is True
        async with kefu.db.sessions() as session:
            rows = {
                r.external_id: r.meta
                for r in await session.scalars(
                    select(Interaction).where(Interaction.external_id.like("optout-%"))
                )
            }
    assert rows["optout-6@example.org"]["auth"] == f"dmarc=pass ({MX})"
    assert rows["optout-7@example.org"]["auth"] == "dkim=pass (d=example.org, verified by kefu)"
    assert rows["optout-1@example.org"]["sender_verified"] is False


def test_authentication_results_parsing() -> None:
    raw = (
        b"Authentication-Results: mx.kefu.test (Postfix); spf=pass smtp.mailfrom=a@shop.example.com;\r\n"
        b" dkim=pass (2048-bit key) header.d=example.com header.i=@example.com;\r\n"
        b" dmarc=none header.from=shop.example.com\r\nFrom: a@shop.example.com\r\n\r\nbody"
    )
    # relaxed alignment: a signature by the parent domain vouches for the subdomain
    assert from_results(raw, "shop.example.com", ("mx.kefu.test",)) == "dkim=pass (mx.kefu.test)"
    assert from_results(raw, "example.net", ("mx.kefu.test",)) is None
    assert from_results(raw, "shop.example.com", ()) is None
    assert authenticate(raw, "a@shop.example.com", "退订", AuthSettings(verify_dkim=False)) is None


async def test_an_unauthenticated_mail_is_never_a_survey_answer(db: Any) -> None:
    """A resolved conversation's "5" by forged mail is not taken as the customer's rating."""
    from handlers import survey
    from storage.models import Conversation

    async with db.transaction() as session:
        customer = Customer(tags=[])
        session.add(customer)
        await session.flush()
        conversation = Conversation(customer_id=customer.id, status="resolved")
        session.add(conversation)
        await session.flush()
        forged = Inbound(
            "email", "s-1@example.org", "alice@example.org", "5", meta={"sender_verified": False}
        )
        assert await survey.as_answer(SessionLookup(session), conversation.id, forged) is None
