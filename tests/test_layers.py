"""The import-linter layers contract (pyproject.toml, run by scripts/lint) names every module of
bot/: a module it leaves out would be free to import anything."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return contracts


def test_every_bot_module_is_in_a_layer() -> None:
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    assert isinstance(layers, list)
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    modules = {f"bot.{p.stem}" for p in (ROOT / "bot").glob("*.py") if p.stem != "__init__"}
    assert modules - named == set(), "add these to a layer in [tool.importlinter]"
    for package in ("channels", "handlers", "storage"):
        assert package in named


def test_the_engine_may_import_no_particular_channel() -> None:
    engine = next(c for c in _contracts() if c["id"] == "engine")
    forbidden = set(engine["forbidden_modules"])  # type: ignore[arg-type]
    channels = {f"channels.{p.stem}" for p in (ROOT / "channels").glob("*.py")}
    # channels.base is the interface the outbox sends through.
    assert channels - forbidden == {"channels.__init__", "channels.base"}


def test_no_import_is_exempt() -> None:
    assert all(not c.get("ignore_imports") for c in _contracts())


def test_the_walk_of_one_message_names_each_module_once() -> None:
    """docs/ARCHITECTURE.md walks one webhook message to its callback POST: every step is a
    module (or package) that exists, and none is a step twice."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    walk = text.split("## One message, from `channels/webhook.py` to the callback POST")[1]
    walk = walk.split("\n## ")[0]
    steps = re.findall(r"^\s*\d+\. (.+?) \(", walk, re.MULTILINE)
    assert len(steps) >= 9
    named = [m for step in steps for m in re.findall(r"\*\*`([^`]+)`\*\*", step)]
    assert len(named) == len(set(named)), named
    for module in named:
        assert (ROOT / module).exists(), module
    assert named[0] == "channels/webhook.py" and named[-1] == "channels/webhook_callback.py"
