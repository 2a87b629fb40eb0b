from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from bot.cli import app
from bot.cli_campaigns import import_customers
from handlers.customer_import import Record, Rejected, Settings, validate
from storage.db import Database
from storage.models import Customer, Identity

FIXTURES = Path(__file__).parent / "fixtures" / "import"
HEADER = [
    "name",
    "email",
    "phone",
    "telegram_id",
    "birthday",
    "timezone",
    "language",
    "tags",
    "marketing_consent",
]
TODAY = date(2026, 6, 1)


def row(settings: Settings | None = None, **cells: object) -> Record | Rejected:
    values = [cells.get(h) for h in HEADER]
    return validate(2, HEADER, values, settings or Settings(today=TODAY))


@pytest.mark.parametrize(
    ("typed", "day_first", "birthday", "md"),
    [
        ("1990-01-05", True, date(1990, 1, 5), "01-05"),
        ("1990/1/5", True, date(1990, 1, 5), "01-05"),
        ("19900105", True, date(1990, 1, 5), "01-05"),
        ("05.01.1990", True, date(1990, 1, 5), "01-05"),
        ("05.01.1990", False, date(1990, 5, 1), "05-01"),
        ("05/01/1990", False, date(1990, 5, 1), "05-01"),
        ("1990年1月5日", True, date(1990, 1, 5), "01-05"),
        ("01-05", True, None, "01-05"),
        ("--01-05", False, None, "01-05"),
        ("05.01", True, None, "01-05"),
        ("1/5", False, None, "01-05"),
        ("1月5日", True, None, "01-05"),
        ("02-29", True, None, "02-29"),
    ],
    ids=str,
)
def test_birthdays_in_the_formats_people_type(
    typed: str, day_first: bool, birthday: date | None, md: str
) -> None:
    got = row(Settings(day_first=day_first, today=TODAY), email="a@example.com", birthday=typed)
    assert isinstance(got, Record), got
    assert (got.birthday, got.birthday_md) == (birthday, md)


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        ({"birthday": "31.02.1990"}, "birthday '31.02.1990': no such date read as DD.MM.YYYY"),
        ({"birthday": "1985-02-29"}, "no such date"),
        ({"birthday": "13/13"}, "no such month and day"),
        ({"birthday": "yesterday"}, "birthday 'yesterday': use 1990-01-05"),
        ({"birthday": "2030-01-01"}, "not a plausible birth date"),
        ({"email": "not-an-email"}, "email 'not-an-email'"),
        ({"phone": "12345"}, "phone '12345': not a valid number (read with default region CN)"),
        ({"telegram_id": "@alice"}, "telegram_id '@alice': use the numeric Telegram user id"),
        ({"timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus': not an IANA time zone"),
        ({"timezone": "UTC+8"}, "timezone 'UTC+8'"),
        ({"language": "12"}, "language '12'"),
        ({"marketing_consent": "maybe"}, "marketing_consent 'maybe': use yes/no"),
    ],
    ids=str,
)
def test_bad_cells_are_rejected_with_a_reason_naming_column_and_value(
    cells: dict[str, str], reason: str
) -> None:
    got = row(**{"email": "ok@example.com", **cells})
    assert isinstance(got, Rejected)
    assert reason in got.reason


def test_a_row_without_any_identity_is_rejected() -> None:
    got = row(name="Nobody", birthday="1990-01-05")
    assert isinstance(got, Rejected) and "no email, phone or telegram_id" in got.reason


def test_identities_are_normalised() -> None:
    got = row(
        email="Xiaoming.Wang@Example.COM",
        phone="138 0013 8000",
        telegram_id=123456789.0,  # a number cell in a spreadsheet
        timezone="asia/shanghai",
        language="zh_CN",
        tags="vip，retail、vip",
        marketing_consent="是",
    )
    assert isinstance(got, Record)
    assert got.identities() == [
        ("email", "xiaoming.wang@example.com"),
        ("phone", "+8613800138000"),
        ("telegram", "123456789"),
    ]
    assert (got.timezone, got.language, got.tags, got.marketing_consent) == (
        "Asia/Shanghai",
        "zh",
        ("retail", "vip"),
        True,
    )


def test_phone_default_region_comes_from_settings() -> None:
    got = row(Settings(default_region="US", today=TODAY), phone="(415) 555-2671")
    assert isinstance(got, Record) and got.phone == "+14155552671"


async def _customers(db: Database) -> dict[str, Customer]:
    async with db.sessions() as session:
        found = await session.execute(
            select(Identity.address, Customer).join(Customer, Customer.id == Identity.customer_id)
        )
        return {address: customer for address, customer in found}


async def test_csv_import_creates_then_reimport_changes_nothing(db: Database) -> None:
    settings = Settings(today=TODAY)
    first = await import_customers(db, FIXTURES / "customers.csv", settings, batch=3)
    assert (first.created, first.updated, first.unchanged) == (5, 0, 0)
    reasons = {r.row: r.reason for r in first.rejected}
    assert sorted(reasons) == [4, 8, 9, 10, 11, 12, 13, 14, 15]
    assert "no such date" in reasons[4]  # 1985-02-29 does not exist
    assert "no email, phone or telegram_id" in reasons[8]

    by_address = await _customers(db)
    wang = by_address["xiaoming.wang@example.com"]
    assert by_address["+8613800138000"].id == wang.id
    assert (wang.display_name, wang.birthday, wang.birthday_md, wang.tags) == (
        "王小明",
        date(1990, 1, 5),
        "01-05",
        ["retail", "vip"],
    )
    assert wang.marketing_consent is True
    alice = by_address["alice@example.com"]
    assert by_address["123456789"].id == alice.id and by_address["+14155552671"].id == alice.id
    yearless = by_address["yearless@example.com"]
    assert (yearless.birthday, yearless.birthday_md, yearless.timezone) == (None, "03-15", None)
    assert by_address["lisi@example.cn"].timezone == "Asia/Shanghai"

    again = await import_customers(db, FIXTURES / "customers.csv", settings, batch=3)
    assert (again.created, again.updated, again.unchanged, len(again.rejected)) == (0, 0, 5, 9)
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Customer)) == 5
        assert await session.scalar(select(func.count()).select_from(Identity)) == 9


async def test_xlsx_rows_update_customers_matched_by_any_identity(db: Database) -> None:
    settings = Settings(today=TODAY)
    await import_customers(db, FIXTURES / "customers.csv", settings)
    report = await import_customers(db, FIXTURES / "customers.xlsx", settings)
    # 王小明 matches by email and phone and is unchanged (a real date cell, a number-typed phone).
    assert (report.created, report.updated, report.unchanged) == (1, 0, 1)
    assert [r.row for r in report.rejected] == [4]
    carol = (await _customers(db))["carol@example.com"]
    assert (carol.birthday, carol.birthday_md, carol.language, carol.marketing_consent) == (
        None,
        "01-05",
        "ja",
        False,
    )


async def test_a_row_fills_only_its_cells_and_conflicting_identities_are_rejected(
    db: Database, tmp_path: Path
) -> None:
    settings = Settings(today=TODAY)
    await import_customers(db, FIXTURES / "customers.csv", settings)
    update = tmp_path / "update.csv"
    update.write_text(
        "email,telegram_id,timezone,marketing_consent\n"
        "ALICE@example.com,,Europe/London,\n"  # fills timezone; consent cell empty: stays yes
        "lisi@example.cn,123456789,,\n"  # 李四's email, Alice's Telegram id
        "new@example.com,,,\n",
        encoding="utf-8",
    )
    report = await import_customers(db, update, settings)
    assert (report.created, report.updated, report.unchanged) == (1, 1, 0)
    assert len(report.rejected) == 1
    assert "identities of different customers" in report.rejected[0].reason
    alice = (await _customers(db))["alice@example.com"]
    assert (alice.timezone, alice.marketing_consent, alice.display_name) == (
        "Europe/London",
        True,
        "Alice Smith",
    )


async def test_gb18030_csv_from_chinese_excel(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("姓名,邮箱,生日\n张三,zhangsan@example.com,1988年8月8日\n".encode("gb18030"))
    report = await import_customers(db, path, Settings(today=TODAY))
    assert report.created == 1
    zhang = (await _customers(db))["zhangsan@example.com"]
    assert (zhang.display_name, zhang.birthday) == ("张三", date(1988, 8, 8))


def test_cli_import_prints_summary_and_writes_rejected_csv(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/kefu.db"\n')
    source = tmp_path / "people.csv"
    source.write_bytes((FIXTURES / "customers.csv").read_bytes())
    result = CliRunner().invoke(app, ["customers", "import", str(source), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "created 5, updated 0, unchanged 0, rejected 9" in result.output
    with (tmp_path / "people.rejected.csv").open(encoding="utf-8-sig") as fh:
        rejected = list(csv.DictReader(fh))
    assert [r["row"] for r in rejected][:2] == ["4", "8"]
    assert rejected[0]["email"] == "bob@example.org" and "no such date" in rejected[0]["reason"]

    bad = tmp_path / "people.txt"
    bad.write_text("x")
    result = CliRunner().invoke(app, ["customers", "import", str(bad), "--config", str(config)])
    assert result.exit_code == 1
    assert "use a .csv or .xlsx file" in result.output


async def test_a_large_file_imports_whole_and_reimports_unchanged(tmp_path: Path) -> None:
    """Batch boundaries (1,000 rows) crossed many times; speed is bench/campaigns.py's job."""
    rows = 12_345
    path = tmp_path / "big.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for n in range(rows):
            writer.writerow(
                [
                    f"客户{n}",
                    f"c{n}@example.com",
                    f"+86138{n:08d}",
                    "",
                    f"19{n % 90 + 10:02d}-{n % 12 + 1:02d}-{n % 28 + 1:02d}",
                    "Asia/Shanghai",
                    "zh",
                    "retail",
                    "yes",
                ]
            )
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/kefu.db")
    await db.upgrade()
    try:
        first = await import_customers(db, path, Settings(today=TODAY))
        again = await import_customers(db, path, Settings(today=TODAY))
    finally:
        await db.dispose()
    assert first.created == rows and not first.rejected
    assert again.unchanged == rows and again.created == again.updated == 0
