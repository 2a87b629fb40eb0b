"""Conformance on real-world mail: Zammad's parser corpus (../shared/corpora/zammad-mail, read in
place; see its PROVENANCE.md), scored against Zammad's own expected parse.

What is counted, per mail with an expected parse (`expected.json`, made from the `.yml` files):
- sender: kefu's address equals Zammad's `from_email` (lowercased), over the mails whose
  `from_email` is an addr-spec;
- subject: kefu's subject equals Zammad's (whitespace collapsed), over the mails that have one;
- customer text: the start of Zammad's body (HTML turned to text, whitespace collapsed, its first
  40 characters, or as many as kefu kept when it kept fewer) is in what kefu logged, over the
  mails whose body has visible content (Zammad writes "no visible content" for the others). kefu
  strips quoted history and signatures by design, which is why the start is compared;
- non-Latin text: the same, over the customer-text mails whose expected body holds CJK, kana,
  Hangul or Cyrillic text.
Every `.box`, with or without an expected parse, must parse without an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.messages import Inbound
from channels.email import MailStore, to_inbound
from channels.mail_parse import html_to_text

ROOT = Path(__file__).resolve().parents[2]
# ../shared beside the repository; a git worktree under wt/ finds it one level further up.
CORPUS = (
    next(
        (
            p
            for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared")
            if (p / "corpora").is_dir()
        ),
        ROOT.parent / "shared",
    )
    / "corpora"
    / "zammad-mail"
)
OWN = "support@kefu.test"
PREFIX = 40
_NON_LATIN = re.compile(r"[\u0400-\u04ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_ADDR = re.compile(r"[^@\s<>\"]+@[^@\s<>\"]+")


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def expected_text(entry: dict[str, str | None]) -> str:
    body = entry.get("body") or ""
    if entry.get("content_type") == "text/html" or re.search(r"<(div|p|br|span|a)\b", body):
        body = html_to_text(body, drop_quotes=False)
    return squash(body)


def starts_as(expected: str, got: str) -> bool:
    """The same text: Zammad's first PREFIX characters are in what kefu logged (or all of what
    kefu kept, when a signature or quote was cut early), or kefu's first PREFIX characters are in
    Zammad's (which keeps an HTML title or heading before the text)."""
    if len(got) < min(8, len(expected)):
        return False
    n = min(PREFIX, len(expected), len(got))
    return expected[:n] in got or got[:n] in expected


@dataclass
class Score:
    hit: int = 0
    total: int = 0
    missed: list[str] = field(default_factory=list)

    def count(self, name: str, ok: bool) -> None:
        self.total += 1
        self.hit += ok
        if not ok:
            self.missed.append(name)

    def __str__(self) -> str:
        return f"{self.hit}/{self.total}"


@dataclass
class Report:
    parsed: int = 0
    crashes: list[str] = field(default_factory=list)
    sender: Score = field(default_factory=Score)
    subject: Score = field(default_factory=Score)
    text: Score = field(default_factory=Score)
    non_latin: Score = field(default_factory=Score)

    def lines(self) -> list[str]:
        return [
            f"zammad-mail: {self.parsed} mails parsed, {len(self.crashes)} crashes {self.crashes}",
            f"  sender        {self.sender}  missed {self.sender.missed}",
            f"  subject       {self.subject}  missed {self.subject.missed}",
            f"  customer text {self.text}  missed {self.text.missed}",
            f"  non-Latin     {self.non_latin}  missed {self.non_latin.missed}",
        ]


def score(corpus: Path, store: MailStore) -> Report:
    expected: dict[str, dict[str, str | None]] = json.loads((corpus / "expected.json").read_text())
    report = Report()
    for box in sorted(corpus.glob("*.box")):
        name = box.stem
        try:
            inbound = to_inbound(box.read_bytes(), store, own_address=OWN)
        except Exception as exc:  # noqa: BLE001 - counted: the test asserts there are none
            report.crashes.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        report.parsed += 1
        if name in expected:
            judge(name, expected[name], inbound, report)
    return report


def judge(name: str, entry: dict[str, str | None], inbound: Inbound, report: Report) -> None:
    sender = entry.get("from_email") or ""
    if _ADDR.fullmatch(sender):
        report.sender.count(name, inbound.address == sender.lower())
    subject = entry.get("subject")
    if subject is not None:
        report.subject.count(name, squash(inbound.title or "") == squash(subject))
    text = expected_text(entry)
    got = inbound.text
    if inbound.kind == "event" and inbound.meta.get("kind") in ("auto_reply", "bounce"):
        got = got.partition("\n\n")[2]  # kefu's one-line note first, then the mail's own text
    if text and text != "no visible content":
        ok = starts_as(text, squash(got))
        report.text.count(name, ok)
        if _NON_LATIN.search(text):
            report.non_latin.count(name, ok)


def test_zammad_corpus(tmp_path: Path) -> None:
    if not (CORPUS / "expected.json").exists():
        pytest.skip(f"the zammad-mail corpus is not at {CORPUS}: see shared/corpora")
    report = score(CORPUS, MailStore(tmp_path, 1 << 20))
    print("\n" + "\n".join(report.lines()))
    assert report.crashes == []
    assert report.sender.hit >= 84, report.lines()
    assert report.subject.hit >= 87, report.lines()
    assert report.text.hit >= 68, report.lines()
    assert report.non_latin.hit >= 10, report.lines()
