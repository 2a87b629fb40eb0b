"""Complaint classifier throughput: messages/s on one core, against a bare str.lower() loop.

Run by hand: python bench/complaints.py [SECONDS]. The ratio is the figure to watch; absolute
rates vary by machine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.complaints import classify  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "complaints_labelled.jsonl"


def messages() -> Corpus:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]
    return [(row["text"], row["language"]) for row in rows]


Corpus = list[tuple[str, str | None]]


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
    corpus = messages()
    classify(*corpus[0])  # compile the lexicon outside the timing
    baseline = rate(lambda text, language: text.lower(), corpus, seconds)
    measured = rate(classify, corpus, seconds)
    mean = sum(len(text) for text, _ in corpus) / len(corpus)
    print(f"messages: {len(corpus)} distinct, mean {mean:.0f} chars")
    print(f"str.lower() baseline: {baseline:,.0f} messages/s")
    print(f"classify:             {measured:,.0f} messages/s")
    slower = baseline / measured
    print(f"ratio:                {measured / baseline:.4f} of the baseline ({slower:.0f}x slower)")


if __name__ == "__main__":
    main()
