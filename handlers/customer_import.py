"""Customer import, the pure part: one spreadsheet row -> a validated Record, or a reason why not.

Empty cells mean "leave as it is": re-importing a file, or importing one with fewer columns, never
erases what kefu already knows. A birthday typed without a year is kept as birthday=None with
birthday_md="MM-DD": the greeting still goes out on the day, only the age is unknown.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from bot.language import primary_tag
from storage.customer_import import Record as Record
from storage.customer_import import Rejected as Rejected

COLUMNS = (
    "name",
    "email",
    "phone",
    "telegram_id",
    "birthday",
    "timezone",
    "language",
    "tags",
    "marketing_consent",
    "vip",
)
IDENTITY_COLUMNS = ("email", "phone", "telegram_id")

# Headers people actually write, mapped to ours (Chinese spreadsheets, capitalised English).
HEADER_ALIASES = {
    "姓名": "name",
    "名字": "name",
    "full name": "name",
    "邮箱": "email",
    "电子邮件": "email",
    "e-mail": "email",
    "手机": "phone",
    "手机号": "phone",
    "电话": "phone",
    "mobile": "phone",
    "telegram": "telegram_id",
    "生日": "birthday",
    "出生日期": "birthday",
    "时区": "timezone",
    "time zone": "timezone",
    "语言": "language",
    "标签": "tags",
    "营销同意": "marketing_consent",
    "同意营销": "marketing_consent",
    "consent": "marketing_consent",
}

TRUE_WORDS = {"1", "y", "yes", "true", "t", "x", "✓", "是", "同意", "已同意", "on"}
FALSE_WORDS = {"0", "n", "no", "false", "f", "否", "不同意", "未同意", "off"}

LANGUAGE_WORDS = {
    "中文": "zh",
    "汉语": "zh",
    "简体中文": "zh",
    "繁体中文": "zh",
    "chinese": "zh",
    "英文": "en",
    "英语": "en",
    "english": "en",
}
LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}([-_][a-z0-9]{2,8})*$", re.IGNORECASE)
TAG_SPLIT = re.compile(r"[,;，；、|]")
TELEGRAM_ID = re.compile(r"^[1-9]\d{0,15}$")


@dataclass(frozen=True, slots=True)
class Settings:
    default_region: str = "CN"
    day_first: bool = True
    today: date | None = None  # birthdays after this are refused; injected by tests


class FileProblem(ValueError):
    """The whole file cannot be read (format, header); rows are never half-imported."""


# --- reading ---------------------------------------------------------------------------------


def normalise_header(cell: Any) -> str:
    key = str(cell or "").strip().lower().replace("\ufeff", "")
    key = HEADER_ALIASES.get(key, key)
    return key.replace(" ", "_").replace("-", "_")


def read_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, list[Any]]], int]:
    """(header, rows as (spreadsheet row number, cells), row count) for a .csv or .xlsx file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows = _read_csv(path)
    elif suffix == ".xlsx":
        header, rows = _read_xlsx(path)
    else:
        raise FileProblem(
            f"{path.name}: use a .csv or .xlsx file (got {suffix or 'no extension'!r})"
        )
    keys = [normalise_header(h) for h in header]
    if not any(k in IDENTITY_COLUMNS for k in keys):
        raise FileProblem(
            f"{path.name}: the header row {header!r} has none of the columns "
            f"{', '.join(IDENTITY_COLUMNS)}; rows cannot be matched to customers"
        )
    numbered = [(n, r) for n, r in enumerate(rows, start=2) if any(_text(c) for c in r)]
    return keys, iter(numbered), len(numbered)


def _read_csv(path: Path) -> tuple[list[str], list[list[Any]]]:
    raw = path.read_bytes()
    # Excel on a Chinese Windows saves "CSV" as GB18030/GBK; UTF-8 (with or without BOM) first.
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - gb18030 decodes any byte string
        raise FileProblem(f"{path.name}: not UTF-8 or GB18030 text")
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = next(reader)
    except StopIteration:
        raise FileProblem(f"{path.name}: the file is empty") from None
    return header, list(reader)


def _read_xlsx(path: Path) -> tuple[list[str], list[list[Any]]]:
    import openpyxl  # imported here: only xlsx imports pay for it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, OSError, KeyError, ValueError) as exc:
        raise FileProblem(f"{path.name}: not a readable .xlsx workbook: {exc}") from None
    try:
        sheet = book.worksheets[0]
        rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    finally:
        book.close()
    if not rows:
        raise FileProblem(f"{path.name}: the first sheet is empty")
    return [str(h) if h is not None else "" for h in rows[0]], rows[1:]


# --- validating ------------------------------------------------------------------------------


class _Bad(ValueError):
    pass


def validate(
    number: int, header: Sequence[str], cells: Sequence[Any], settings: Settings
) -> Record | Rejected:
    values: dict[str, Any] = {}
    for key, cell in zip(header, cells, strict=False):
        if key in COLUMNS and key not in values:
            values[key] = cell
    shown = {k: _text(v) for k, v in values.items()}
    try:
        return _record(number, values, settings)
    except _Bad as exc:
        return Rejected(number, str(exc), shown)


def _record(number: int, values: Mapping[str, Any], settings: Settings) -> Record:
    name = _text(values.get("name")) or None
    if name is not None and len(name) > 200:
        raise _Bad(f"name is {len(name)} characters long; at most 200")
    email = _email(_text(values.get("email")))
    phone = _phone(values.get("phone"), settings.default_region)
    telegram_id = _telegram(values.get("telegram_id"))
    if not (email or phone or telegram_id):
        raise _Bad("no email, phone or telegram_id: the row cannot be matched or reached")
    birthday, birthday_md = _birthday(values.get("birthday"), settings)
    return Record(
        row=number,
        name=name,
        email=email,
        phone=phone,
        telegram_id=telegram_id,
        birthday=birthday,
        birthday_md=birthday_md,
        timezone=_timezone(_text(values.get("timezone"))),
        language=_language(_text(values.get("language"))),
        tags=_tags(_text(values.get("tags"))),
        marketing_consent=_flag("marketing_consent", _text(values.get("marketing_consent"))),
        vip=_flag("vip", _text(values.get("vip"))),
    )


def _text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, float) and cell.is_integer():
        cell = int(cell)  # spreadsheets hand back 13800138000.0 for a typed number
    return str(cell).strip()


def _email(raw: str) -> str | None:
    if not raw:
        return None
    try:
        # No DNS: an import must not depend on the network, nor take minutes on 100k rows.
        checked = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise _Bad(f"email {raw!r}: {exc}") from None
    return checked.normalized.lower()


def _phone(cell: Any, region: str) -> str | None:
    raw = _text(cell).lstrip("'")  # Excel users type a leading ' to keep a number as text
    if not raw:
        return None
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise _Bad(f"phone {raw!r}: {exc._msg}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise _Bad(f"phone {raw!r}: not a valid number (read with default region {region})")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _telegram(cell: Any) -> str | None:
    raw = _text(cell)
    if not raw:
        return None
    if not TELEGRAM_ID.match(raw):
        raise _Bad(
            f"telegram_id {raw!r}: use the numeric Telegram user id (a @username cannot be "
            "messaged by a bot until the user writes first)"
        )
    return raw


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    return {z.lower(): z for z in available_timezones() if z != "localtime"}


def _timezone(raw: str) -> str | None:
    if not raw:
        return None
    zone = _zones().get(raw.lower())
    if zone is None:
        raise _Bad(f"timezone {raw!r}: not an IANA time zone, e.g. Asia/Shanghai, Europe/Berlin")
    return zone


def _language(raw: str) -> str | None:
    if not raw:
        return None
    word = LANGUAGE_WORDS.get(raw.lower())
    if word:
        return word
    if not LANGUAGE_TAG.match(raw):
        raise _Bad(f"language {raw!r}: use a language code such as zh, en, zh-CN")
    return primary_tag(raw)


def _tags(raw: str) -> tuple[str, ...] | None:
    if not raw:
        return None
    tags: list[str] = []
    for part in TAG_SPLIT.split(raw):
        tag = part.strip()
        if len(tag) > 64:
            raise _Bad(f"tags: {tag[:20]!r}… is over 64 characters")
        if tag and tag not in tags:
            tags.append(tag)
    return tuple(sorted(tags)) or None


def _flag(column: str, raw: str) -> bool | None:
    if not raw:
        return None
    word = raw.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise _Bad(f"{column} {raw!r}: use yes/no, true/false, 1/0 or 是/否")


# --- birthdays -------------------------------------------------------------------------------

_YMD = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})$")
_COMPACT = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_XYZ = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4})$")
_MD_ISO = re.compile(r"^(?:--)?(\d{1,2})-(\d{1,2})$")
_XY = re.compile(r"^(\d{1,2})[./](\d{1,2})$")
_CN = re.compile(r"^(?:(\d{4})\s*年\s*)?(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]?$")


def _birthday(cell: Any, settings: Settings) -> tuple[date | None, str | None]:
    if cell is None or cell == "":
        return None, None
    if isinstance(cell, datetime):
        return _full(cell.year, cell.month, cell.day, cell.date().isoformat(), settings)
    if isinstance(cell, date):
        return _full(cell.year, cell.month, cell.day, cell.isoformat(), settings)
    raw = _text(cell)
    if not raw:
        return None, None
    order = "DD.MM.YYYY" if settings.day_first else "MM.DD.YYYY"
    if m := _YMD.match(raw) or _COMPACT.match(raw):
        return _full(int(m[1]), int(m[2]), int(m[3]), raw, settings)
    if m := _XYZ.match(raw):
        first, second = int(m[1]), int(m[2])
        day, month = (first, second) if settings.day_first else (second, first)
        return _full(
            int(m[3]), month, day, raw, settings, hint=f"read as {order} (customers.day_first)"
        )
    if m := _CN.match(raw):
        if m[1]:
            return _full(int(m[1]), int(m[2]), int(m[3]), raw, settings)
        return None, _month_day(int(m[2]), int(m[3]), raw)
    if m := _MD_ISO.match(raw):
        # A dash keeps ISO order, month first ("01-05", "--01-05"), whatever day_first says.
        return None, _month_day(int(m[1]), int(m[2]), raw)
    if m := _XY.match(raw):
        first, second = int(m[1]), int(m[2])
        day, month = (first, second) if settings.day_first else (second, first)
        return None, _month_day(month, day, raw)
    raise _Bad(
        f"birthday {raw!r}: use 1990-01-05, 1990/1/5, 19900105, {order.replace('YYYY', '1990')}"
        f" or a month and day without a year (01-05)"
    )


def _full(
    year: int, month: int, day: int, raw: str, settings: Settings, hint: str = ""
) -> tuple[date, str]:
    try:
        born = date(year, month, day)
    except ValueError:
        raise _Bad(f"birthday {raw!r}: no such date{' ' + hint if hint else ''}") from None
    today = settings.today or date.today()
    if born > today or born.year < 1900:
        raise _Bad(f"birthday {raw!r}: not a plausible birth date")
    return born, f"{month:02d}-{day:02d}"


def _month_day(month: int, day: int, raw: str) -> str:
    try:
        date(2000, month, day)  # a leap year, so 02-29 is a valid year-less birthday
    except ValueError:
        raise _Bad(f"birthday {raw!r}: no such month and day") from None
    return f"{month:02d}-{day:02d}"
