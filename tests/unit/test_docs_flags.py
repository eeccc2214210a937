"""Docs stay true to the command line: every ``--flag`` the README and docs/configuration.md show
for a ``chameleon`` command is an option of that command's parser (read from its own ``--help``,
so a tool's parser counts as it is), and every flag they name at all exists in some command."""

from __future__ import annotations

import contextlib
import io
import re
from functools import cache
from pathlib import Path

import pytest

from services.cli import main as cli

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/configuration.md")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SUBCOMMANDS = {"session": {"create"}, "auth": {"init"}, "garments": {"add", "list", "show", "load-catalogue"}}


@cache
def flags_of(path: tuple[str, ...]) -> frozenset[str]:
    """The options ``chameleon <path> --help`` lists."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main([*path, "--help"])
    return frozenset(FLAG.findall(out.getvalue()))


def command_path(words: list[str]) -> tuple[str, ...]:
    """The command a ``chameleon ...`` code span runs: its first word, and a sub-command or
    tool name after it when there is one."""
    first = words[0]
    subs = SUBCOMMANDS.get(first) or (set(cli.tools(first)) - {""} if first in cli.TOOL_COMMANDS else set())
    if len(words) > 1 and words[1] in subs:
        return (first, words[1])
    return (first,)


def _spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _every_command() -> list[tuple[str, ...]]:
    paths = [(c,) for c in cli.COMMANDS] + [(c, s) for c, subs in SUBCOMMANDS.items() for s in subs]
    for command in cli.TOOL_COMMANDS:
        paths += [(command, n) if n else (command,) for n in cli.tools(command)]
    return paths


@pytest.mark.parametrize("doc", DOCS)
def test_the_flags_shown_with_a_command_are_its_options(doc: str) -> None:
    wrong = []
    for span in _spans((ROOT / doc).read_text()):
        words = span.replace("\\|", "|").split()
        if (
            len(words) < 2
            or words[0] != "chameleon"
            or words[1] not in {*cli.COMMANDS, "garments", *cli.TOOL_COMMANDS}
        ):
            continue
        path = command_path(words[1:])
        unknown = set(FLAG.findall(span)) - flags_of(path)
        wrong += [f"`{span}`: chameleon {' '.join(path)} has no {f}" for f in sorted(unknown)]
    assert not wrong, "\n".join(wrong)


def test_the_up_flags_table_matches_up() -> None:
    text = (ROOT / "docs/configuration.md").read_text()
    section = text.split("`chameleon up` runs the services under supervision", 1)[1].split("\n\n## ", 1)[0]
    table = [ln for ln in section.splitlines() if ln.startswith("| `--")]
    documented = {FLAG.findall(ln)[0] for ln in table}
    assert documented <= flags_of(("up",)), documented - flags_of(("up",))
    undocumented = flags_of(("up",)) - documented - {"--help", "--services", "--no-catalogue", "--timeout"}
    assert not undocumented, f"up flags missing from configuration.md's table: {undocumented}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_named_exists_somewhere(doc: str) -> None:
    everywhere = frozenset().union(flags_of(()), *(flags_of(p) for p in _every_command()))
    text = (ROOT / doc).read_text()
    named = {
        f
        for span in _spans(text)
        if not span.startswith(("python", "pip", "make", "docker", "npm", "node"))
        for f in FLAG.findall(span)
    }
    assert not named - everywhere, f"{doc} names flags no command has: {sorted(named - everywhere)}"
