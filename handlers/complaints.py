"""Complaint detection: an offline explainable cue scorer for Chinese and English messages.

The cues live in TOML files: handlers/data/complaint_cues.*.toml, plus `[complaints] extra_cues`.
Each cue group has a reason, a kind, a weight and a severity. All groups of the languages a message
needs are compiled into one alternation, so a message is scanned once, left to right; at a position
the earlier kind wins (see KINDS), which lets "no problem" or "not happy" claim the text before
"problem" or "happy" can.

Scoring, in order:
- grievance and topic hits add by noisy-OR; a topic (refund, return, where is my order) counts for
  little inside a question, because "how do I get a refund?" is an inquiry;
- a hit right after a negator in the same clause ("没有问题", "not damaged", "no rush on the
  refund") does not count;
- intensifiers (again, 又, 第三次, "!!") only amplify a grievance that is already there;
- dampeners (thanks, fixed now, 已经解决) shrink the score, unless a contrast ("but", "但是") comes
  after them with a grievance behind it, or a high-severity cue fired.
"""

from __future__ import annotations

import importlib
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.effects import NOT_A_COMPLAINT as NOT_A_COMPLAINT
from bot.effects import Verdict as Verdict
from bot.language import CJK, LANGUAGES, primary_tag
from handlers import complaint_model
from handlers.complaint_model import Model
from handlers.regex_prefilter import with_prefilter

if TYPE_CHECKING:
    from bot.config import ComplaintsConfig


Classify = Callable[[str, str | None], Verdict]

DATA_DIR = Path(__file__).parent / "data"
BUILTIN_CUES = tuple(sorted(DATA_DIR.glob("complaint_cues.*.toml")))
DEFAULT_THRESHOLD = 0.5

# Earlier kinds win when two cues start at the same position.
KINDS = (
    "neutral",  # claims text so nothing shorter fires: "no problem", "不是投诉", "unsubscribe"
    "grievance",  # counts toward the score
    "topic",  # counts, but little inside a question: "refund", "退货"
    "intensifier",  # amplifies a grievance: "again", "又", "第三次"
    "negator",  # cancels the next grievance or topic in the same clause: "not", "没有"
    "contrast",  # "but", "但是": what comes after it outweighs thanks before it
    "dampener",  # thanks, praise, "fixed now"
    "question",  # "how do I", "请问", "吗"
)
COUNTING = frozenset({"grievance", "topic"})
SCORED = frozenset({"grievance", "topic", "intensifier", "dampener"})
SEVERITIES = ("normal", "high")
# How far (words for en, characters otherwise) a negator reaches when its cue does not say.
DEFAULT_REACH = {"en": 3, "zh": 4, "any": 0}
# The model's part (see Classifier._with_model); reasons are fixed names, never message words.
MODEL_REASON = "unhappy tone (model)"
HAPPY_REASON = "happy tone (model)"
# Below this probability of a complaint, a normal-severity cue verdict is dropped: the cue lexicon
# was written for support chat and misreads praise in the wild ("had it for 3 months" as a delay,
# "so cool seriously!" as dissatisfaction). On the valid splits it took back 114 (zh) and 4 (en)
# false alarms for 2 and 0 complaints lost. The English model knows little of support chat ("I want
# my money back" reads calm to it), so in English the lexicon must also hear more praise than
# grievance (Model.sounds_happy).
PRAISE_VETO = {"zh": 0.2, "en": 0.2}
# A model-only flag on a message shorter than these needs a plainly unhappy word in it
# (Model.plainly_unhappy): support chat is full of short plain lines the reviews never had.
SHORT_CHARS = 12
# A message is classified from its first CLASSIFY_CHARS characters. What a customer is unhappy
# about comes first (a mail's quoted history and signature are already cut by the channel); the
# rest of a long text is newsletters, logs, pasted pages. The cues and the model were measured on
# chat- and review-length texts; and classifying runs on the event loop that webhooks share, where
# one regex scan of a 64 KB text held it for 30-190 ms, against 1.5-8 ms for 4,000 characters.
CLASSIFY_CHARS = 4000
SHORT_WORDS = 6
QUESTION_FACTOR = 0.35  # a topic cue's weight inside a question
CLAUSE_BREAK = re.compile(r"[,.!?;:\n]")
LATIN = re.compile(r"[a-z]")
LATIN_ANY_CASE = re.compile(r"[a-zA-Z]")


class CueError(ValueError):
    """A cue file that cannot be used; the message names the file, the cue and the bad value."""


def explicit(source: str) -> Verdict:
    """The sender said so (a webhook "type": "complaint", a /complaint command)."""
    return Verdict(True, "normal", 1.0, (f"explicit: {source}",))


# --- text normalisation -------------------------------------------------------------------------

# NFKC already folds full-width forms (？！，：；Ａ１) to ASCII; these are what it leaves alone.
_FOLD = {"。": ".", "、": ",", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "～": "~"}
# A few common traditional characters are enough for the cue lexicon: it is small and so is this.
_TRADITIONAL = dict(
    zip(
        "錢貨訂單發質壞問題態麼還沒這個買賣給讓說話電燒傷騙師體協會費務處遲極換廠們來時間從東應該"
        "複誤號碼遞運達過進後為聯繫網頁對錯實嚴總經驗關開區幫謝請嗎當機無損賠償訴點氣憤亂員兩週"
        "禮拜倆馬樣樣瑕疵髒爛滿廢廳衛門車險診醫院聞報紙記視頻曝貼帳戶卡銀銷攔險敗燙爐"
        "嚇",
        "钱货订单发质坏问题态么还没这个买卖给让说话电烧伤骗师体协会费务处迟极换厂们来时间从东应该"
        "复误号码递运达过进后为联系网页对错实严总经验关开区帮谢请吗当机无损赔偿诉点气愤乱员两周"
        "礼拜俩马样样瑕疵脏烂满废厅卫门车险诊医院闻报纸记视频曝贴帐户卡银销拦险败烫炉"
        "吓",
        strict=True,
    )
)
_TABLE = str.maketrans(_FOLD | _TRADITIONAL)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_TABLE).lower()
    return " ".join(text.split())


def resolve_language(text: str, language: str | None) -> str:
    """The caller's language when it is one we have cues for, else the text's own."""
    if language:
        primary = primary_tag(language)
        if primary in ("zh", "cmn", "yue", "wuu"):
            return "zh"
        if primary == "en":
            return "en"
    return detect_language(text)


def detect_language(text: str) -> str:
    # One CJK character carries about as much as a short English word, so weigh it three letters.
    cjk = len(CJK.findall(text))
    latin = len(LATIN_ANY_CASE.findall(text))
    return "zh" if cjk * 3 >= latin and cjk else "en"


# --- cue files ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cue:
    reason: str
    kind: str
    weight: float
    severity: str
    language: str  # zh | en | any
    reach: int
    source: str  # regex over normalised text, without capturing groups


def load_cue_file(path: str | Path) -> list[Cue]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CueError(f"cue file {str(path)!r} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CueError(f"cue file {str(path)!r} is not valid TOML: {exc}") from None
    language = data.get("language")
    if language not in (*LANGUAGES, "any"):
        raise CueError(
            f"cue file {str(path)!r}: 'language' has value {language!r}; use zh, en or any"
        )
    tables = data.get("cue", [])
    if not isinstance(tables, list) or not tables:
        raise CueError(f"cue file {str(path)!r} has no [[cue]] tables")
    return [_cue(table, language, f"{path}: cue #{n}") for n, table in enumerate(tables, 1)]


def _cue(table: Mapping[str, Any], language: str, where: str) -> Cue:
    unknown = set(table) - {"reason", "kind", "weight", "severity", "reach", "phrases", "patterns"}
    if unknown:
        raise CueError(f"{where}: {sorted(unknown)[0]!r} is not a known cue key")
    reason = table.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise CueError(f"{where}: 'reason' has value {reason!r}; give a short name like 'delay'")
    where = f"{where} ({reason!r})"
    kind = table.get("kind", "grievance")
    if kind not in KINDS:
        raise CueError(f"{where}: 'kind' has value {kind!r}; use one of {', '.join(KINDS)}")
    # Kinds that only shape other cues need no weight.
    weight = table.get("weight", None if kind in SCORED else 0.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise CueError(f"{where}: 'weight' has value {weight!r}; use a number from 0 to 1")
    severity = table.get("severity", "normal")
    if severity not in SEVERITIES:
        raise CueError(f"{where}: 'severity' has value {severity!r}; use normal or high")
    reach = table.get("reach", DEFAULT_REACH[language])
    if isinstance(reach, bool) or not isinstance(reach, int) or reach < 0:
        raise CueError(f"{where}: 'reach' has value {reach!r}; use a whole number >= 0")
    source = _source(table, where)
    return Cue(reason.strip(), kind, float(weight), severity, language, reach, source)


def _source(table: Mapping[str, Any], where: str) -> str:
    phrases = _strings(table, "phrases", where)
    patterns = _strings(table, "patterns", where)
    if not phrases and not patterns:
        raise CueError(f"{where}: give 'phrases' or 'patterns'")
    for pattern in patterns:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise CueError(f"{where}: pattern {pattern!r} is not a valid regex: {exc}") from None
        if compiled.groups:
            raise CueError(f"{where}: pattern {pattern!r} has a capturing group; use (?:...)")
    # Patterns first: they are the more specific spellings of a cue.
    parts = [*patterns]
    if phrases:
        parts.append(_trie([normalize(p) for p in phrases]))
    return "|".join(parts)


def _strings(table: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise CueError(f"{where}: {key!r} has value {value!r}; use a list of non-empty strings")
    return list(value)


def _trie(phrases: Iterable[str]) -> str:
    """One regex for many literals, factored by prefix so the engine tries each character once."""
    root: dict[str, Any] = {}
    for phrase in phrases:
        node = root
        for ch in phrase:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _trie_source(root)


def _trie_source(node: dict[str, Any]) -> str:
    ends_here = "" in node
    branches = [re.escape(ch) + _trie_source(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # Greedy "?": where a phrase ends and a longer one goes on, the longer is tried first.
    return f"(?:{body})?" if ends_here else body


# --- the compiled lexicon -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    cue: Cue
    start: int
    end: int


class Lexicon:
    """All cue groups, compiled into one scanner per set of languages a message can need."""

    def __init__(self, cues: Sequence[Cue]) -> None:
        self.cues = tuple(cues)
        self._scanners: dict[frozenset[str], tuple[re.Pattern[str], dict[str, Cue]]] = {}
        for wanted in (frozenset({"zh"}), frozenset({"en"}), frozenset(LANGUAGES)):
            self._scanners[wanted] = self._compile(wanted)

    def _compile(self, languages: frozenset[str]) -> tuple[re.Pattern[str], dict[str, Cue]]:
        names: dict[str, Cue] = {}
        alternations: dict[str, list[str]] = {"en": [], "zh": [], "any": []}
        ordered = sorted(
            (c for c in self.cues if c.language in languages or c.language == "any"),
            key=lambda c: KINDS.index(c.kind),  # stable: file order within a kind
        )
        for n, cue in enumerate(ordered):
            names[f"c{n}"] = cue
            alternations[cue.language].append(f"(?P<c{n}>{cue.source})")
        parts = []
        if alternations["en"]:
            # English cues are whole words: "late" must not fire inside "chocolate".
            parts.append(r"(?<![a-z])(?:" + "|".join(alternations["en"]) + r")(?![a-z])")
        parts += alternations["zh"] + alternations["any"]
        return re.compile(with_prefilter("|".join(parts)) if parts else r"(?!)"), names

    def scan(self, text: str, languages: frozenset[str]) -> Iterator[Hit]:
        pattern, names = self._scanners[languages]
        for match in pattern.finditer(text):
            name = match.lastgroup
            if name is not None and match.end() > match.start():
                yield Hit(names[name], match.start(), match.end())


# --- scoring ------------------------------------------------------------------------------------


class Classifier:
    def __init__(
        self, lexicon: Lexicon, threshold: float = DEFAULT_THRESHOLD, model: Model | None = None
    ) -> None:
        self.lexicon = lexicon
        self.threshold = threshold
        self.model = model

    def __call__(self, text: str, language: str | None) -> Verdict:
        norm = normalize(text[:CLASSIFY_CHARS])
        if not norm:
            return NOT_A_COMPLAINT
        primary = resolve_language(norm, language)
        languages = {primary}
        if primary != "zh" and CJK.search(norm):
            languages.add("zh")
        if primary != "en" and LATIN.search(norm):
            languages.add("en")
        hits = list(self.lexicon.scan(norm, frozenset(languages)))
        verdict = self._verdict(norm, hits)
        if self.model is None:
            return verdict
        # The model reads the text's own language: a caller's "zh" on English words is no help.
        return self._with_model(verdict, norm, detect_language(norm), hits)

    def _with_model(self, verdict: Verdict, norm: str, language: str, hits: list[Hit]) -> Verdict:
        """The cues decide where they are sure; the model decides where they are silent.

        A cue verdict stands unless it is normal severity and the model is sure the message is
        praise (the cue lexicon's false alarms: "best $50 I ever spent"). Without a cue verdict,
        the model's probability above its threshold makes a complaint, except where the cues read
        the message as calm (see _calm): support questions share words with unhappy reviews ("can
        I return it?"), and asking is what a support desk is for.
        """
        model = self.model
        assert model is not None
        if verdict.severity == "high":
            return verdict
        if not verdict.is_complaint and _calm(norm, hits):
            return verdict  # and the model need not run: most support traffic ends here
        p, grams = model.assess(norm, language)
        if verdict.is_complaint:
            if p < PRAISE_VETO[language] and model.sounds_happy(norm, language):
                return Verdict(False, "none", round(p, 3), (*verdict.reasons, HAPPY_REASON))
            return verdict
        # On the cue score's scale: the model's own threshold lands on 0.5, so [complaints]
        # threshold moves both the same way.
        score = _scaled(p, model.threshold[language])
        if score < self.threshold:
            return verdict
        if _short(norm, language) and not model.plainly_unhappy(norm, grams, language):
            return verdict  # "my name is Ann", "订单号是12345": too little to read a mood from
        evidence = model.explain(norm, grams, language)
        score = round(score, 3)
        return Verdict(True, "normal", score, (MODEL_REASON, *verdict.reasons), evidence)

    def _verdict(self, text: str, hits: list[Hit]) -> Verdict:
        question = "?" in text or any(h.cue.kind == "question" for h in hits)
        counted: dict[str, tuple[float, Cue]] = {}  # reason -> (weight, cue): a reason counts once
        negated: list[str] = []
        for n, hit in enumerate(hits):
            if hit.cue.kind not in COUNTING:
                continue
            if n and _negates(hits[n - 1], hit, text):
                negated.append(f"negated: {hit.cue.reason}")
                continue
            weight = hit.cue.weight
            if hit.cue.kind == "topic" and question:
                weight *= QUESTION_FACTOR
            if weight > counted.get(hit.cue.reason, (0.0, hit.cue))[0]:
                counted[hit.cue.reason] = (weight, hit.cue)
        score = _noisy_or(w for w, _ in counted.values())
        high = any(c.severity == "high" for _, c in counted.values())
        boosts: dict[str, float] = {}
        if score > 0:
            for hit in hits:
                if hit.cue.kind == "intensifier":
                    boosts[hit.cue.reason] = max(boosts.get(hit.cue.reason, 0.0), hit.cue.weight)
            score = 1 - (1 - score) * (1 - _noisy_or(boosts.values()))
        damps: dict[str, float] = {}
        if not high:
            for hit in _standing_dampeners(hits):
                damps[hit.cue.reason] = max(damps.get(hit.cue.reason, 0.0), hit.cue.weight)
            score *= 1 - _noisy_or(damps.values())
        reasons = [r for r, _ in sorted(counted.items(), key=lambda kv: -kv[1][0])]
        if question and any(c.kind == "topic" for _, c in counted.values()):
            reasons.append("question")  # why a refund or return topic counted for little
        reasons += [*boosts, *damps, *negated]
        reasons += [h.cue.reason for h in hits if h.cue.kind == "neutral"]
        score = round(min(max(score, 0.0), 1.0), 3)
        if score < self.threshold:
            return Verdict(False, "none", score, tuple(dict.fromkeys(reasons)))
        return Verdict(True, "high" if high else "normal", score, tuple(dict.fromkeys(reasons)))


def _calm(text: str, hits: list[Hit]) -> bool:
    """No grievance cue, and the cues read a question that only asks or a neutral or polite note."""
    kinds = {h.cue.kind for h in hits}
    if "grievance" in kinds and any(
        h.cue.kind == "grievance" and not (n and _negates(hits[n - 1], h, text))
        for n, h in enumerate(hits)
    ):
        return False
    if ("?" in text or "question" in kinds) and "intensifier" not in kinds:
        return True  # a question that only asks is an inquiry, whatever its words
    # "no rush", "not a complaint", "thanks, sorted": unless a "but" turns it
    return "neutral" in kinds or ("dampener" in kinds and "contrast" not in kinds)


def _short(text: str, language: str) -> bool:
    """Shorter than a review sentence: the model, trained on reviews, reads too much into it."""
    if language == "zh":
        return len(text) < SHORT_CHARS
    return len(text.split()) < SHORT_WORDS


def _scaled(p: float, threshold: float) -> float:
    """p moved so that threshold becomes 0.5: logistic(logit(p) - logit(threshold))."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    odds = (p / (1 - p)) / (threshold / (1 - threshold))
    return odds / (1 + odds)


def _negates(before: Hit, hit: Hit, text: str) -> bool:
    if before.cue.kind != "negator":
        return False
    gap = text[before.end : hit.start]
    if CLAUSE_BREAK.search(gap):
        return False
    size = len(gap.split()) if before.cue.language == "en" else len(gap.strip())
    return size <= before.cue.reach


def _standing_dampeners(hits: list[Hit]) -> Iterator[Hit]:
    """Thanks that a later "but <grievance>" takes back do not count."""
    last_turn = -1
    for n, hit in enumerate(hits):
        if hit.cue.kind == "contrast" and any(h.cue.kind in COUNTING for h in hits[n + 1 :]):
            last_turn = hit.start
    for hit in hits:
        if hit.cue.kind == "dampener" and hit.start > last_turn:
            yield hit


def _noisy_or(weights: Iterable[float]) -> float:
    miss = 1.0
    for weight in weights:
        miss *= 1 - weight
    return 1 - miss


# --- entry points -------------------------------------------------------------------------------


@cache
def _builtin_lexicon() -> Lexicon:
    return Lexicon([cue for path in BUILTIN_CUES for cue in load_cue_file(path)])


@cache
def _builtin() -> Classifier:
    return Classifier(_builtin_lexicon(), model=complaint_model.builtin())


@cache
def cue_classifier() -> Classifier:
    """The built-in cues alone, without the model: what bench/complaints.py compares against."""
    return Classifier(_builtin_lexicon())


def classify(text: str, language: str | None) -> Verdict:
    return _builtin()(text, language)


def load_classifier(cfg: ComplaintsConfig) -> Classify:
    """The classifier [complaints] asks for, checked now so a bad setting stops the start."""
    from bot.config import ConfigError

    if cfg.backend != "builtin":
        if cfg.extra_cues or "threshold" in cfg.model_fields_set:
            raise ConfigError(
                f"[complaints] backend has value {cfg.backend!r}: extra_cues and threshold only "
                'apply to backend = "builtin"; remove them or use the builtin backend'
            )
        return _import_backend(cfg.backend)
    cues = list(_builtin_lexicon().cues)
    for n, path in enumerate(cfg.extra_cues):
        try:
            cues += load_cue_file(path)
        except CueError as exc:
            raise ConfigError(f"[complaints] extra_cues[{n}] has value {path!r}: {exc}") from None
    try:
        lexicon = Lexicon(cues)
    except re.error as exc:  # patterns that compile alone can still clash once joined
        raise ConfigError(
            f"[complaints] extra_cues has value {list(cfg.extra_cues)!r}: {exc}"
        ) from None
    return Classifier(lexicon, cfg.threshold, complaint_model.builtin())


def _import_backend(spec: str) -> Classify:
    from bot.config import ConfigError

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(
            f'[complaints] backend has value {spec!r}: use "builtin" or "package.module:function"'
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"[complaints] backend has value {spec!r}: cannot import {module_name!r}: {exc}"
        ) from None
    backend = getattr(module, attr, None)
    if not callable(backend):
        raise ConfigError(
            f"[complaints] backend has value {spec!r}: {module_name!r} has no callable {attr!r}"
        )
    return backend  # type: ignore[no-any-return]
