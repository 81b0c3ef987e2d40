"""docs/cli.md names every option of every command: each option in its command's row of the
reference table (or in the text beside the table, for options many commands share), and each
value of an option with a fixed set of choices in that row."""

import re
from pathlib import Path

import click
import pytest

from matryoshka.cli import cli

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def reference(text: str) -> tuple[dict[str, str], str]:
    """The CLI reference section's table rows by command, and its text outside the table."""
    section = text.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(0)
            for m in re.finditer(r"^\| `(?:matryoshka )?([\w-]+)[^\n]*", section, flags=re.M)}
    shared = "\n".join(line for line in section.splitlines() if not line.startswith("|"))
    return rows, shared


def missing(cmd: click.Command, row: str, shared: str) -> list[str]:
    """The options of `cmd`, and the choices of its fixed-choice options, that the docs omit."""
    out = []
    for p in cmd.params:
        if not isinstance(p, click.Option):
            continue
        names = [o for o in p.opts + p.secondary_opts if o.startswith("--")]
        if names and not any(re.search(re.escape(o) + r"(?![\w-])", row + shared) for o in names):
            out.append(names[0])
        if isinstance(p.type, click.Choice):
            out += [f"{names[0]} {c}" for c in p.type.choices
                    if not re.search(r"(?<![\w-])" + re.escape(str(c)) + r"(?![\w-])", row)]
    return out


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_and_choice_is_in_the_reference(name):
    rows, shared = reference(REFERENCE.read_text(encoding="utf-8"))
    row = rows.get("mexport" if name == "export" else name)
    assert row, f"docs/cli.md has no row for `{name}`"
    assert not missing(cli.commands[name], row, shared), f"docs/cli.md omits for `{name}`"


def test_the_check_catches_an_option_and_a_choice_left_out():
    @click.command()
    @click.option("--levels")
    @click.option("--schedule", type=click.Choice(["joint", "mix"]))
    @click.option("--rewire/--no-rewire", default=True)
    def train(levels, schedule, rewire):  # pragma: no cover - never run
        pass

    row = "| `matryoshka train --schedule joint --rewire/--no-rewire` | trains |"
    assert missing(train, row, "") == ["--levels", "--schedule mix"]
    assert missing(train, row, "`--levels` and `mix` apply to every command") == [
        "--schedule mix"]
