"""Refusal templates: what an unsafe `chosen` answer is replaced with when a device sanitizes its data.

Twelve varied templates ship in `feddetox/resources/refusals.json`; a user may give their own file, either a
JSON list of strings or a text file with one template per line (blank lines and lines starting with `#` are
ignored). The template for a pair is chosen from a hash of its prompt, so the same prompt always gets the
same refusal, on every device and in every run.

    templates = load_templates()                 # the shipped ones
    templates = load_templates("my_refusals.txt")
    pick_template("How do I ...?", templates)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from feddetox.errors import DataError

SHIPPED_FILE = "refusals.json"

#: a template longer than this is almost certainly a wrong file (a data set given by mistake)
MAX_TEMPLATE_CHARS = 2000


def shipped_templates() -> tuple[str, ...]:
    """The refusal templates that ship with FedDetox."""
    text = resources.files("feddetox.resources").joinpath(SHIPPED_FILE).read_text(encoding="utf-8")
    return _parse_json(text, where=f"feddetox/resources/{SHIPPED_FILE}")


def load_templates(path: str | Path | None = None) -> tuple[str, ...]:
    """Templates from `path` (a JSON list or a text file, one per line), or the shipped ones if None.

    Raises DataError naming the file (and the line or list index) when the file is missing, empty, not
    UTF-8, not a list of non-empty strings, or holds a template over MAX_TEMPLATE_CHARS characters.
    """
    if path is None:
        return shipped_templates()
    path = Path(path)
    if not path.is_file():
        raise DataError("refusal template file not found", path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc}", path=str(path)) from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        return _parse_json(text, where=str(path))
    return _parse_lines(text, where=str(path))


def pick_template(prompt: str, templates: Sequence[str]) -> str:
    """The template for `prompt`: chosen by the prompt's sha256, so it is the same everywhere."""
    if not templates:
        raise DataError("no refusal templates to choose from")
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return templates[int.from_bytes(digest[:8], "big") % len(templates)]


def _parse_json(text: str, *, where: str) -> tuple[str, ...]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", path=where, line=exc.lineno) from exc
    if not isinstance(items, list):
        raise DataError(f"expected a JSON list of strings, got {type(items).__name__}", path=where)
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"template is not a non-empty string: {item!r:.60}", path=where, field=f"[{index}]")
        _check_length(item, where=where, field=f"[{index}]")
    return _non_empty(tuple(item.strip() for item in items), where=where)


def _parse_lines(text: str, *, where: str) -> tuple[str, ...]:
    templates = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        _check_length(line, where=where, line=number)
        templates.append(line)
    return _non_empty(tuple(templates), where=where)


def _check_length(template: str, *, where: str, field: str | None = None, line: int | None = None) -> None:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise DataError(
            f"template is {len(template)} characters long, more than {MAX_TEMPLATE_CHARS}",
            path=where,
            line=line,
            field=field,
        )


def _non_empty(templates: tuple[str, ...], *, where: str) -> tuple[str, ...]:
    if not templates:
        raise DataError("the file holds no refusal template", path=where)
    return templates
