"""Every text a customer sees: Jinja2 sandboxed templates under templates/<lang>/<name>.j2.

Sandboxed because template_dir lets a business edit the texts: a template may read the fields it
is given and nothing else. StrictUndefined so a misspelt field fails at start, not at 9 am.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from bot.language import LANGUAGES as LANGUAGES
from bot.language import language_of as language_of

BUILTIN = Path(__file__).parent / "templates"


class TemplateProblem(ValueError):
    """A template is missing or does not render; the message names the file and the cause."""


class Templates:
    def __init__(
        self, override_dir: str | Path | None = None, default_language: str = "zh"
    ) -> None:
        loaders = [FileSystemLoader(str(BUILTIN))]
        if override_dir is not None:
            loaders.insert(0, FileSystemLoader(str(override_dir)))
        self.default_language = language_of(default_language, "zh")
        self.env = SandboxedEnvironment(
            loader=ChoiceLoader(loaders),
            undefined=StrictUndefined,
            autoescape=False,  # plain text for chat and webhook; HTML templates escape explicitly
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def path(self, name: str, language: str) -> str:
        return f"{language}/{name}.j2"

    def render(self, name: str, language: str | None, context: Mapping[str, Any]) -> str:
        lang = language_of(language, self.default_language)
        try:
            template = self.env.get_template(self.path(name, lang))
            return template.render(**context).strip()
        except TemplateError as exc:
            raise TemplateProblem(
                f"template {self.path(name, lang)}: {type(exc).__name__}: {exc}"
            ) from None

    def check(self, name: str, context: Mapping[str, Any]) -> None:
        """Renders `name` in every language; raises TemplateProblem naming the first bad one."""
        for lang in LANGUAGES:
            if not self.render(name, lang, context):
                raise TemplateProblem(f"template {self.path(name, lang)} renders to an empty text")
