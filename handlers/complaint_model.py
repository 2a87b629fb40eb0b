"""The learned half of complaint detection: a linear model over character and word n-grams.

Trained offline by scripts/train_complaints.py on public labelled reviews (see
handlers/complaint_corpora.py) and shipped as handlers/data/complaint_model.json.gz; scored here in
pure Python, so nothing is downloaded and no numeric library is needed at run time.

- Chinese: the set of character 1-, 2- and 3-grams of the normalised text ("不好", "太低", "失望").
- English: the set of word unigrams and bigrams ("not worth", "waste"), of "~word" for each word a
  negator governs within its clause ("couldn't be easier": ~be, ~easier), and of 3- to 5-character
  pieces of words ("<disap", "ing>"), all from the main clause only (after the last "but", less
  an "although" clause: see main_clause); plus five lexicon figures from VADER's human-rated word
  list (MIT; vader_lexicon.txt, exported into the model file), over every word: the sum of
  negative and of positive word valences, each flipped when a negator comes within three words
  before in the same clause, their squashed total, that total with what follows a "but"
  outweighing what precedes it, and the most negative word. The lexicon carries the model to
  words the training sentences never had.

The n-gram part is length-normalised (the sum of the weights that fired over the square root of the
number of n-grams), so a long review and a short chat message are on one scale. `explain` returns
the n-grams that pushed hardest toward a complaint: they become the verdict's reasons.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

MODEL_PATH = Path(__file__).parent / "data" / "complaint_model.json.gz"
FORMAT = 1
MAX_CHARS = 1000  # the start of a long email says enough; the cue scanner still reads all of it
WORD = re.compile(r"[a-z#]+(?:'[a-z]+)*|[!?]")
# Tokens with the punctuation that ends a clause, which ends a negator's reach.
TOKEN = re.compile(r"[a-z#]+(?:'[a-z]+)*|[!?.,;:]")
SILENT = frozenset(".,;:")  # clause marks that are no word of their own
BREAKS = frozenset((*SILENT, "!", "?", "but", "however", "although", "though", "yet"))
CONTRASTS = frozenset(("but", "however", "yet"))
# A clause these open concedes a point the sentence then outweighs ("although it is a bit loud, it
# works great"; "despite this minor disappointment, i recommend it").
CONCESSIONS = frozenset(("although", "though", "despite"))
DIGITS = re.compile(r"[0-9]+")
NEGATORS = frozenset(
    (
        "not",
        "no",
        "never",
        "none",
        "nothing",
        "nowhere",
        "neither",
        "nor",
        "without",
        "cannot",
        "hardly",
        "barely",
        "rarely",
        "seldom",
        "cant",
        "dont",
        "doesnt",
        "didnt",
        "isnt",
        "wasnt",
        "werent",
        "wont",
        "wouldnt",
        "couldnt",
        "shouldnt",
        "havent",
        "hasnt",
        "hadnt",
        "aint",
        "arent",
    )
)
STRONG_GRAM = 4.0  # see Model.plainly_unhappy
NEGATION_REACH = 3
NEGATION_SCOPE = 4  # words a negator governs for the "~word" features
NEGATION_SCALE = -0.74  # VADER's: a negated word keeps part of its strength, the other way round


def model_text(text: str) -> str:
    """What the model reads of normalised text: the start, with each run of digits as one "#".

    In support chat numbers are order, phone and tracking numbers; in the training reviews they are
    mostly waiting times ("等了2个小时"), so the digits themselves would read as grievance."""
    return DIGITS.sub("#", text[:MAX_CHARS])


def zh_features(text: str) -> set[str]:
    n = len(text)
    return (
        set(text)
        | {text[i : i + 2] for i in range(n - 1)}
        | {text[i : i + 3] for i in range(n - 2)}
    )


def en_tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def _negator(token: str) -> bool:
    return token in NEGATORS or token.endswith("n't")


def en_words(tokens: list[str]) -> set[str]:
    words = [t for t in tokens if t not in SILENT]
    return set(words) | {f"{a} {b}" for a, b in pairwise(words)}


def negated(tokens: list[str]) -> set[str]:
    """A "~word" for each word a negator governs: up to NEGATION_SCOPE words, within its clause.
    "couldn't be easier" gives ~be, ~easier: the model weighs a negated word apart from the word."""
    out: set[str] = set()
    left = 0
    for token in tokens:
        if token in BREAKS:
            left = 0
        elif _negator(token):
            left = NEGATION_SCOPE
        elif left:
            out.add(f"~{token}")
            left -= 1
    return out


def main_clause(tokens: list[str]) -> list[str]:
    """The words that carry a sentence's verdict: those after its last "but" ("however", "yet"),
    less any clause "although" ("though", "despite") opens. "minor issues, but it works great" is
    praise, "looks nice but it broke" a complaint: what comes before the turn is conceded. All of
    the tokens when nothing would be left."""
    kept: list[str] = []
    conceding = False
    for token in tokens:
        if token in CONTRASTS:
            kept.clear()
            conceding = False
        elif token in CONCESSIONS:
            conceding = True
        elif conceding:
            conceding = token not in SILENT
        else:
            kept.append(token)
    return kept or tokens


def en_features(tokens: list[str]) -> set[str]:
    """The n-grams of the main clause (see main_clause); the lexicon figures read every word."""
    tokens = main_clause(tokens)
    grams = en_words(tokens) | negated(tokens)
    for token in tokens:
        if len(token) > 2:
            grams |= _pieces(token)
    return grams


@lru_cache(maxsize=1 << 16)
def _pieces(token: str) -> frozenset[str]:
    """3- to 5-character pieces of a word: they carry a stem to its other forms ("<disap")."""
    word = f"<{token}>"
    return frozenset(word[i : i + k] for k in (3, 4, 5) for i in range(len(word) - k + 1))


def lexicon_figures(tokens: list[str], lexicon: Mapping[str, float]) -> tuple[float, ...]:
    """The tokens' valences, negation applied (a negator up to NEGATION_REACH words before, in the
    same clause): (negative sum, positive sum, squashed total, the same total with the words after
    a "but" counting three times those before it (VADER's rule), the most negative word)."""
    negative = positive = 0.0
    before = after = 0.0
    lowest = 0.0
    reach = 0
    for token in tokens:
        if token in BREAKS:
            reach = 0
            if token in CONTRASTS:
                before, after = before + after, 0.0
            continue
        valence = lexicon.get(token)
        if valence is not None:
            if reach:
                valence *= NEGATION_SCALE
            if valence < 0:
                negative += valence
                lowest = min(lowest, valence)
            else:
                positive += valence
            after += valence
        if _negator(token):
            reach = NEGATION_REACH
        elif reach:
            reach -= 1
    total = negative + positive
    turned = 0.5 * before + 1.5 * after if before else after
    return (
        negative / 4,
        positive / 4,
        _squash(total),
        _squash(turned),
        lowest / 4,
    )


def _squash(total: float) -> float:
    return total / math.sqrt(total * total + 15)


def scale(count: int) -> float:
    """What each n-gram's weight counts for in a text with `count` of them: 1/sqrt(count) puts a
    long review and a short message on one scale."""
    return 1 / math.sqrt(count)


@dataclass(frozen=True, slots=True)
class Side:
    """One language's model: a bias, n-gram weights and (English) dense lexicon weights."""

    bias: float
    weights: dict[str, float]
    dense: tuple[float, ...] = ()
    lexicon: Mapping[str, float] | None = None

    def parts(self, text: str, language: str) -> tuple[float, set[str]]:
        """The logit and the n-grams it saw."""
        if language == "zh":
            grams = zh_features(text)
            dense = 0.0
        else:
            tokens = en_tokens(text)
            grams = en_features(tokens)
            dense = 0.0
            if self.lexicon is not None:
                figures = lexicon_figures(tokens, self.lexicon)
                dense = sum(w * f for w, f in zip(self.dense, figures, strict=True))
        if not grams:
            return self.bias + dense, grams
        # map/filter keep the loop in C; a missing n-gram's None is dropped by filter.
        total = sum(filter(None, map(self.weights.get, grams)))
        return self.bias + dense + total * scale(len(grams)), grams


class Model:
    def __init__(self, sides: Mapping[str, Side], threshold: Mapping[str, float]) -> None:
        self.sides = dict(sides)
        self.threshold = dict(threshold)

    def assess(self, text: str, language: str) -> tuple[float, set[str]]:
        """P(complaint) for normalised text (language zh or en), and the n-grams it saw."""
        logit, grams = self.sides[language].parts(model_text(text), language)
        return 1 / (1 + math.exp(-max(-30.0, min(30.0, logit)))), grams

    def sounds_happy(self, text: str, language: str) -> bool:
        """English: the lexicon hears clear praise, net of grievance (negation applied). Chinese
        has no lexicon here, and the model alone answers: True."""
        lexicon = self.sides[language].lexicon
        if lexicon is None:
            return True
        negative, positive = lexicon_figures(en_tokens(model_text(text)), lexicon)[:2]
        # figures are valence / 4: net praise of at least one plainly positive word ("good" is 1.9,
        # "want" 0.3)
        return positive + negative >= 0.25

    def plainly_unhappy(self, text: str, grams: set[str], language: str) -> bool:
        """A word that is unhappy on its own: in English one the lexicon rates negative (negation
        applied: "not good"), in Chinese an n-gram of weight STRONG_GRAM or more ("不好")."""
        side = self.sides[language]
        if side.lexicon is not None:
            negative = lexicon_figures(en_tokens(model_text(text)), side.lexicon)[0]
            return negative < 0
        get = side.weights.get
        return any(get(g, 0.0) >= STRONG_GRAM for g in grams)

    def probability(self, text: str, language: str) -> float:
        return self.assess(text, language)[0]

    def explain(self, text: str, grams: set[str], language: str, top: int = 3) -> tuple[str, ...]:
        """The n-grams that pushed hardest toward a complaint, strongest first, overlaps removed.

        Only those within half the strongest one's (length-favoured) weight, and in English only
        whole words and word pairs, which a person can read."""
        weights = self.sides[language].weights
        if language == "en":
            grams = en_words(en_tokens(model_text(text)))
        # A longer n-gram says more to a reader than one character or "a": favour it somewhat.
        ranked = sorted(
            ((weights.get(g, 0.0) * math.sqrt(len(g)), g) for g in grams),
            key=lambda wg: (-wg[0], wg[1]),
        )
        chosen: list[str] = []
        floor = ranked[0][0] / 2 if ranked else 0.0
        for weight, gram in ranked:
            if weight <= 0 or weight < floor or len(chosen) == top:
                break
            if (language == "en" and len(gram) < 3) or any(gram in c or c in gram for c in chosen):
                continue
            chosen.append(gram)
        return tuple(chosen)


def side_from_json(data: Mapping[str, Any]) -> Side:
    return Side(
        float(data["bias"]),
        {str(k): float(v) for k, v in data["weights"].items()},
        tuple(float(d) for d in data.get("dense", ())),
        {str(k): float(v) for k, v in data["lexicon"].items()} if data.get("lexicon") else None,
    )


def load(path: Path = MODEL_PATH) -> Model:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: model format {data.get('format')!r}, expected {FORMAT}")
    sides = {lang: side_from_json(data[lang]) for lang in ("zh", "en")}
    return Model(sides, {lang: float(data[lang]["threshold"]) for lang in ("zh", "en")})


@cache
def builtin() -> Model:
    return load()


def dump(path: Path, sides: Mapping[str, Mapping[str, Any]], about: Mapping[str, Any]) -> None:
    """Write a model file: small and stable, so a retrain shows up as a readable size change."""
    payload = {"format": FORMAT, "about": dict(about), **{k: dict(v) for k, v in sides.items()}}
    raw = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    # No name, no time in the gzip header: the same training gives the same bytes, wherever written.
    with open(path, "wb") as out, gzip.GzipFile("", "wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.encode("utf-8"))


def rounded(weights: Iterable[tuple[str, float]], digits: int = 3) -> dict[str, float]:
    return {k: round(v, digits) for k, v in weights if round(v, digits) != 0}
