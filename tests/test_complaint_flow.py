"""The whole complaint path over real HTTP: a webhook complaint -> acknowledgement on the callback
->
staff flagged with severity, reasons and assignee -> agent answers and resolves -> survey POSTed ->
score posted back, signed -> `kefu report --format json` shows it all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from bot.cli import app
from handlers import agents, lifecycle
from handlers.roles import Actor
from storage import staff
from storage.models import Conversation, Interaction, OutboxRow, Survey
from tests.servers.callback import CallbackServer
from tests.servers.kefu import base_config, post_signed, running_kefu, url

SECRET = "flow-secret-51ab"


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    async with CallbackServer(SECRET) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def flow_config(db_url: str, callback: CallbackServer) -> dict[str, Any]:
    return base_config(
        db_url,
        webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET", "callback_url": callback.url}}},
        routing={
            "business_name": "好物商城",
            "teams": [
                {"name": "care", "members": ["alice", "bob"], "leads": ["lena"]},
                {"name": "sales", "members": ["sam"]},
            ],
            "rules": [{"complaint": True, "team": "care"}, {"team": "sales"}],
        },
    )


async def test_complaint_acknowledged_flagged_resolved_surveyed_reported(
    tmp_path: Path, callback: CallbackServer, client: httpx.AsyncClient
) -> None:
    db_path = tmp_path / "kefu.db"
    config = flow_config(f"sqlite+aiosqlite:///{db_path}", callback)
    async with running_kefu(config, {"SHOP_SECRET": SECRET}) as kefu:
        async with kefu.db.transaction() as s:
            alice = await staff.add(s, "alice")
            await staff.add(s, "bob")
            await staff.add(s, "lena", role="lead")
            alice_id = alice.id
        endpoint = url(kefu, "/webhooks/shop")

        # 1. The complaint arrives on the webhook.
        r = await post_signed(client, endpoint, SECRET, {
            "id": "m-1",
            "user": {"id": "u-7", "name": "王芳", "language": "zh"},
            "text": "我要去消费者协会投诉你们，还要曝光到媒体！订单一个月都没到",
        })
        assert r.status_code == 202, r.text
        conversation_id = r.json()["conversation_id"]

        # 2. The acknowledgement reaches the callback: Chinese, with the ticket and a due time.
        (ack,) = await callback.wait_for(1)
        body = ack.json
        assert body["type"] == "ack" and body["user"] == {"id": "u-7"}
        assert (
            f"#{conversation_id}" in body["text"]
            and "投诉" in body["text"]
            and "好物商城" in body["text"]
        )
        assert body["ticket"] == conversation_id and body["reason"] == "complaint"
        assert ack.key == body["id"] and body["id"].startswith(f"ack:{conversation_id}:")

        # 3. Staff are flagged: routed to the care team's first member, urgent, with reasons.
        async with kefu.db.sessions() as s:
            conversation = await s.get(Conversation, conversation_id)
            flags = list(await s.scalars(select(Interaction).where(
                Interaction.conversation_id == conversation_id, Interaction.direction == "event")))
        assert conversation is not None
        assert (conversation.team, conversation.assignee, conversation.priority) == (
            "care",
            alice_id,
            "urgent",
        )
        assert conversation.is_complaint and conversation.severity == "high"
        assert conversation.first_response_due_at is not None
        (flag,) = [f for f in flags if f.meta.get("kind") == "complaint_flagged"]
        assert flag.meta["severity"] == "high" and flag.meta["assignee"] == alice_id
        assert "threat to escalate: media" in flag.meta["reasons"] and "@alice" in flag.text

        # 4. The agent answers (first response) and resolves.
        async with kefu.db.transaction() as s:
            await agents.answer(
                s, conversation_id, "非常抱歉，我们马上为您补发。", agent="alice", staff_id=alice_id
            )
        async with kefu.db.transaction() as s:
            change = await lifecycle.resolve(
                s, conversation_id, Actor("alice", "agent", alice_id), kefu.config
            )
        assert change.survey_id is not None
        kefu.worker.wake()

        # 5. The reply and the survey reach the callback; the survey carries its id and choices.
        received = await callback.wait_for(3)
        survey_post = next(x.json for x in received if x.json["type"] == "survey")
        assert survey_post["survey"] == {"id": change.survey_id, "choices": [1, 2, 3, 4, 5]}
        assert "1 到 5" in survey_post["text"]

        # 6. The customer's score comes back as a signed webhook; it does not reopen the
        # conversation.
        r = await post_signed(client, endpoint, SECRET, {
            "id": "s-1", "type": "survey", "user": {"id": "u-7"},
            "survey_id": change.survey_id, "score": 4, "comment": "补发很快，谢谢",
        })
        assert r.status_code == 202, r.text
        again = await post_signed(
            client,
            endpoint,
            SECRET,
            {
                "id": "s-2",
                "type": "survey",
                "user": {"id": "u-7"},
                "survey_id": change.survey_id,
                "score": 1,
            },
        )
        assert again.status_code == 202  # logged, but a survey is answered once
        async with kefu.db.sessions() as s:
            survey = await s.get(Survey, change.survey_id)
            conversation = await s.get(Conversation, conversation_id)
            staff_rows = list(
                await s.scalars(select(OutboxRow).where(OutboxRow.channel == "telegram"))
            )
        assert survey is not None and (survey.score, survey.comment) == (4, "补发很快，谢谢")
        assert conversation is not None and conversation.status == "resolved"
        assert staff_rows == []  # Telegram is off: the logged event is the staff notification

    # 7. The report, from the CLI, as a lead would run it.
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{db_path}"\n')
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["report", "--format", "json", "--as", "lena", "--config", str(cfg_file)],
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["complaints"]["total"] == 1
    assert data["complaints"]["by_severity"] == {"high": 1}
    assert {"reason": "threat to escalate: media", "count": 1} in data["complaints"]["by_cue"]
    first = data["response_times"]["first_response"]
    assert (
        first["count"] == 1 and first["median_seconds"] is not None and first["median_seconds"] >= 0
    )
    assert data["response_times"]["resolution"]["count"] == 1
    assert data["csat"]["average"] == 4.0 and data["csat"]["distribution"]["4"] == 1
    assert data["csat"]["answered"] == data["csat"]["asked"] == 1
    (agent,) = data["agents"]
    assert (agent["name"], agent["resolved"], agent["csat_average"]) == ("alice", 1, 4.0)

    # An agent may not run the report.
    denied = await asyncio.to_thread(
        CliRunner().invoke, app, ["report", "--as", "alice", "--config", str(cfg_file)]
    )
    assert denied.exit_code == 1 and "needs role lead" in denied.stderr


FORUM = -1001234567890


async def test_staff_group_gets_the_flag_and_the_escalation_in_the_topic(
    tmp_path: Path, callback: CallbackServer, client: httpx.AsyncClient
) -> None:
    from datetime import timedelta

    from storage.models import utcnow
    from tests.servers.botapi import TOKEN, BotApiServer

    async with BotApiServer(forum_chats={FORUM}) as botapi:
        config = flow_config(f"sqlite+aiosqlite:///{tmp_path}/kefu.db", callback)
        config["telegram"] = {"enabled": True, "base_url": botapi.base_url, "staff_chat_id": FORUM,
                              "poll_timeout_seconds": 1}
        async with running_kefu(
            config, {"SHOP_SECRET": SECRET, "KEFU_TELEGRAM_TOKEN": TOKEN}
        ) as kefu:
            async with kefu.db.transaction() as s:
                await staff.add(s, "alice")
                await staff.add(s, "lena", role="lead")
            r = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, {
                "id": "m-1", "user": {"id": "u-9", "name": "Sam", "language": "en"},
                "text": "I will contact my lawyer and sue you, the heater burned my hand",
            })
            assert r.status_code == 202, r.text
            conversation_id = r.json()["conversation_id"]
            await botapi.wait_for(
                lambda b: any("Complaint #" in (x.text or "") for x in b.to(FORUM)),
                what="the complaint flag",
            )
            # Same topic; waiting together, the mirror and the flag are merged into one post.
            flag = next(x for x in botapi.to(FORUM) if "Complaint #" in (x.text or ""))
            mirror = next(x for x in botapi.to(FORUM) if "sue you" in (x.text or ""))
            assert mirror.thread_id is not None and flag.thread_id == mirror.thread_id
            assert flag.text is not None and "HIGH" in flag.text and "@alice" in flag.text
            assert "threat to escalate: lawyer" in flag.text and "priority urgent" in flag.text
            (ack,) = await callback.wait_for(1)
            assert ack.json["type"] == "ack" and "ticket #" in ack.json["text"]

            # An hour later nobody has answered: the leads are called, in the same topic, once.
            kefu.care.clock = lambda: utcnow() + timedelta(hours=1, minutes=1)
            (breach,) = await kefu.care.check_sla()
            assert breach.conversation_id == conversation_id and breach.target == "first_response"
            assert await kefu.care.check_sla() == []
            kefu.worker.wake()
            await botapi.wait_for(
                lambda b: any("SLA breach" in (x.text or "") for x in b.to(FORUM)),
                what="the escalation",
            )
            escalation = next(x for x in botapi.to(FORUM) if "SLA breach" in (x.text or ""))
            assert escalation.thread_id == mirror.thread_id and "@lena" in (escalation.text or "")
