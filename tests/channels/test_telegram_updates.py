"""One test per stored Bot API update: translate() turns each into kefu's terms, or says why not."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from telegram import Bot, Update

from bot.language import primary_tag
from bot.messages import Attachment
from channels.telegram_updates import (
    CustomerUpdate,
    Ignored,
    LinkRequest,
    StaffPost,
    SurveyPress,
    fallback,
    parse_survey_data,
    survey_data,
    translate,
)
from tests.servers.botapi import TOKEN, fixture

FORUM = -1001234567890
GROUP = -1009876543210
BOT = Bot(TOKEN)


def parsed(name: str, staff_chat_id: int | None = FORUM) -> object:
    return translate(Update.de_json(fixture(name), BOT), staff_chat_id=staff_chat_id)


def customer(name: str) -> CustomerUpdate:
    item = parsed(name)
    assert isinstance(item, CustomerUpdate), item
    return item


def test_private_text() -> None:
    item = customer("message__private_text")
    inbound = item.inbound
    assert (inbound.channel, inbound.address, inbound.external_id) == (
        "telegram",
        "1001",
        "1001:1365",
    )
    assert inbound.text == "你好，我的订单还没到"
    assert inbound.kind == "message"
    assert inbound.display_name == "张三"
    assert inbound.language == "zh"
    assert inbound.received_at == datetime.fromtimestamp(1763890000, UTC)
    assert inbound.meta["telegram"] == {"chat_id": 1001, "message_id": 1365, "username": "zhangsan"}
    assert item.link is None


def test_photo_with_caption_keeps_the_largest_size() -> None:
    inbound = customer("message__private_photo_caption").inbound
    assert inbound.text == "包裹破损了，看照片"
    assert inbound.attachments == (
        Attachment(kind="photo", file_id="AgACAgUAAxkBAAIBXmdTyA1-large", size=88121,
                   mime_type="image/jpeg", caption="包裹破损了，看照片"),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "message__private_document",
            Attachment(
                kind="document",
                file_id="BQACAgUAAxkBAAIBX2dTyB2-doc",
                name="发票-2026-11.pdf",
                mime_type="application/pdf",
                size=183204,
                caption="invoice attached",
            ),
        ),
        (
            "message__private_voice",
            Attachment(
                kind="voice",
                file_id="AwACAgUAAxkBAAIBYGdTyC3-voice",
                mime_type="audio/ogg",
                size=24012,
            ),
        ),
        (
            "message__private_video",
            Attachment(
                kind="video",
                file_id="BAACAgUAAxkBAAIBYWdTyEQ-video",
                name="unboxing.mp4",
                mime_type="video/mp4",
                size=2281934,
            ),
        ),
        ("message__private_location", Attachment(kind="location", url="geo:31.230416,121.473701")),
    ],
    ids=["document", "voice", "video", "location"],
)
def test_attachments(name: str, expected: Attachment) -> None:
    inbound = customer(name).inbound
    assert inbound.kind == "message"
    assert inbound.attachments == (expected,)


def test_own_contact_asks_for_a_phone_link() -> None:
    item = customer("message__private_contact")
    assert item.inbound.attachments == (
        Attachment(kind="contact", url="tel:8613800138000", name="张三"),
    )
    assert item.link == LinkRequest(
        "phone", "1001", "8613800138000", "张三", "zh", channel="telegram"
    )


def test_someone_elses_contact_is_only_an_attachment() -> None:
    item = customer("message__private_contact_other")
    assert item.inbound.attachments[0].url == "tel:+44 7700 900123"
    assert item.link is None


def test_start_is_an_event_without_a_link() -> None:
    item = customer("message__private_start")
    assert item.inbound.kind == "event"
    assert item.inbound.meta["kind"] == "start"
    assert item.link is None


def test_start_with_payload_asks_for_a_link() -> None:
    item = customer("message__private_start_payload")
    assert item.inbound.kind == "event"
    assert item.link == LinkRequest(
        "start", "1001", "LINKTOKEN", "张三", "zh", channel="telegram"
    )


def test_reply_names_the_replied_message() -> None:
    inbound = customer("message__private_reply").inbound
    assert inbound.reply_to == ("1001:1380",)


def test_edit_is_an_edit_event_of_the_original() -> None:
    inbound = customer("edited_message__private_text").inbound
    assert inbound.kind == "edit"
    assert inbound.external_id == "1001:1365:edit:1763890090"
    assert inbound.reply_to == ("1001:1365",)
    assert inbound.meta["edit_of"] == "1001:1365"
    assert inbound.text.endswith("（订单号 88231）")


def test_unsupported_content_is_logged_as_an_event() -> None:
    inbound = customer("message__private_poll").inbound
    assert inbound.kind == "event"
    assert inbound.text == "[unsupported Telegram message: poll]"


def test_blocked_by_the_user() -> None:
    inbound = customer("my_chat_member__private_blocked").inbound
    assert inbound.kind == "event"
    assert inbound.meta["kind"] == "blocked"
    assert inbound.external_id == "member:1001:1763890300:kicked"


def test_staff_topic_message() -> None:
    post = parsed("message__staff_topic")
    assert post == StaffPost(
        chat_id=FORUM,
        message_id=58,
        user_id=2002,
        user_name="Alice Wang",
        text="您好，包裹明天送到。",
        thread_id=57,
        reply_to_message_id=None,
        has_media=False,
        sent_at=datetime.fromtimestamp(1763890120, UTC),
        channel="telegram",
    )


def test_staff_topic_command() -> None:
    post = parsed("message__staff_topic_command")
    assert isinstance(post, StaffPost)
    assert post.text == "/note@kefu_test_bot customer called twice"
    assert post.thread_id == 57


def test_staff_reply_in_a_group_without_topics() -> None:
    post = parsed("message__staff_reply", staff_chat_id=GROUP)
    assert isinstance(post, StaffPost)
    assert (post.thread_id, post.reply_to_message_id) == (None, 811)


def test_group_message_outside_the_staff_group_is_ignored() -> None:
    assert isinstance(parsed("message__staff_reply", staff_chat_id=FORUM), Ignored)


@pytest.mark.parametrize(
    "name",
    ["message__staff_topic_created", "my_chat_member__staff_added", "callback_query__unhandled"],
)
def test_ignored(name: str) -> None:
    item = parsed(name)
    assert isinstance(item, Ignored)
    assert item.reason


def test_survey_button_press() -> None:
    assert parsed("callback_query__survey") == SurveyPress(
        query_id="4382bfdwdsb323b2e1", user_id="1001", survey_id=17, score=4,
        chat_id=1001, message_id=1391, choices=(1, 2, 3, 4, 5), language="zh", channel="telegram",
    )


def test_survey_press_on_a_message_too_old_to_show() -> None:
    data = fixture("callback_query__survey")
    # Bot API: a message older than 48 hours comes as an InaccessibleMessage (date 0, no content).
    data["callback_query"]["message"] = {"chat": data["callback_query"]["message"]["chat"],
                                         "message_id": 1391, "date": 0}
    item = translate(Update.de_json(data, BOT), staff_chat_id=FORUM)
    assert isinstance(item, SurveyPress)
    assert (item.survey_id, item.score, item.choices) == (17, 4, ())


@pytest.mark.parametrize(
    "data", ["rate:5", "survey:17", "survey:x:4", "survey:17:4:1", "", "survey::4"]
)
def test_other_callback_data_is_not_a_survey(data: str) -> None:
    assert parse_survey_data(data) is None


def test_survey_data_round_trip_fits_telegrams_64_bytes() -> None:
    data = survey_data(2**63 - 1, 5)
    assert len(data.encode()) <= 64
    assert parse_survey_data(data) == (2**63 - 1, 5)


def test_edit_in_the_staff_group_is_ignored() -> None:
    data = fixture("message__staff_topic")
    data["edited_message"] = {**data.pop("message"), "edit_date": 1763890999}
    assert isinstance(translate(Update.de_json(data, BOT), staff_chat_id=FORUM), Ignored)


@pytest.mark.parametrize(
    ("code", "expected"),
    [("zh-hans", "zh"), ("en", "en"), ("pt-br", "pt"), ("", None), (None, None), ("12", None)],
)
def test_language_of(code: str | None, expected: str | None) -> None:
    assert primary_tag(code) == expected


def test_a_shape_ptb_cannot_parse_is_still_logged() -> None:
    data = fixture("malformed__poll_without_persistent_id")
    with pytest.raises(TypeError):
        Update.de_json(data, BOT)
    item = fallback(data, "TypeError")
    assert isinstance(item, CustomerUpdate)
    assert (item.inbound.external_id, item.inbound.address) == ("1001:1374", "1001")
    assert item.inbound.kind == "event"
    assert item.inbound.meta["unparsed"] == "TypeError"


def test_fallback_ignores_what_it_cannot_place() -> None:
    assert isinstance(fallback({"update_id": 1, "poll": {}}, "x"), Ignored)
    assert isinstance(
        fallback({"update_id": 1, "message": {"chat": {"type": "private"}}}, "x"), Ignored
    )
