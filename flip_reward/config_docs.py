"""The settings' documentation, generated from flip_reward/config.py: the README's configuration tables
and the help of each `flip-reward` settings flag.

`make docs` (python -m flip_reward.config_docs) rewrites the README's block between the markers;
`--check` only says whether the committed README matches (tests/unit/test_config_docs.py does the same).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flip_reward.config import SETTING_GROUP_CLASSES, SettingsGroup

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- settings: generated from flip_reward/config.py by `make docs`; edit the descriptions there -->"
END = "<!-- settings: end of the generated block -->"


@dataclass(frozen=True)
class SettingDoc:
    name: str
    env: str
    flag: str
    default: str
    description: str


def shown_default(field: FieldInfo) -> str:
    """The default as a user would write it in the environment."""
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "empty"
    if isinstance(value, Path):
        home = str(Path.home())
        return "~" + str(value)[len(home) :] if str(value).startswith(home) else str(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_docs(group: type[SettingsGroup]) -> Iterator[SettingDoc]:
    for name, field in group.model_fields.items():
        yield SettingDoc(
            name=name,
            env=f"FLIP_{name.upper()}",
            flag="--" + name.replace("_", "-"),
            default=shown_default(field),
            description=field.description or "",
        )


def flag_help(name: str, field: FieldInfo) -> str:
    """A settings flag's --help text: the description, its variable and default. argparse formats
    help with %, so a literal % is doubled."""
    text = f"{field.description} [env FLIP_{name.upper()}] (default: {shown_default(field)})"
    return text.replace("%", "%%")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """The README's configuration tables, one section per settings group."""
    lines = [BEGIN]
    for group in SETTING_GROUP_CLASSES:
        lines += ["", f"### {group.title}", "", "| variable | flag | default | meaning |", "|---|---|---|---|"]
        for doc in setting_docs(group):
            default = doc.default if doc.default in ("unset", "empty") else f"`{_cell(doc.default)}`"
            lines.append(f"| `{doc.env}` | `{doc.flag}` | {default} | {_cell(doc.description)} |")
    lines += ["", END]
    return "\n".join(lines)


def with_settings(readme: str) -> str:
    """The README text with its generated block replaced by the current one."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + settings_markdown() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the settings tables into README.md.")
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    current = README.read_text()
    generated = with_settings(current)
    if args.check:
        if generated != current:
            print("README.md's settings tables are out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    if generated != current:
        README.write_text(generated)
        print("README.md: settings tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
