"""The CLI a person can guess: the top-level help lists every command with a line, ``--version``
answers, an unknown command is named, and ``--help`` on every command and tool shows its usage under
its ``chameleon`` name and never runs it."""

from __future__ import annotations

import pytest

from services.cli import main as cli

pytestmark = pytest.mark.unit


def _every_command_line() -> list[list[str]]:
    lines = [[name] for name in cli.COMMANDS]
    lines += [["session", "create"], ["auth", "init"], ["garments"]]
    lines += [["garments", verb] for verb in ("add", "list", "show", "load-catalogue")]
    for command in cli.TOOL_COMMANDS:
        found = cli.tools(command)
        lines += [[command]] if "" in found else [[command], *([command, name] for name in sorted(found))]
    return lines


def test_top_level_help_lists_every_command_with_a_line(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in [*cli.COMMANDS, "garments", *cli.TOOL_COMMANDS]:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name + " ")), "")
        assert len(line.split()) > 2, f"{name}: no help line in\n{out}"


def test_no_command_prints_the_help_and_fails(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "camera" in err and "bench" in err and "--version" in err


def test_version(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("chameleon ") and out.split()[1][0].isdigit(), out


def test_an_unknown_command_is_named(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["frobnicate", "--x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["chameleon: unknown command 'frobnicate' (the commands: chameleon --help)"]


@pytest.mark.parametrize("argv", _every_command_line(), ids=" ".join)
def test_help_shows_usage_and_never_runs_the_command(argv, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def ran(*_a, **_k):  # type: ignore[no-untyped-def]
        raise AssertionError(f"`chameleon {' '.join(argv)} --help` ran the command")

    for name, (line, add, _run) in list(cli.COMMANDS.items()):
        monkeypatch.setitem(cli.COMMANDS, name, (line, add, ran))
    monkeypatch.setattr("runtime.media.ensure_sample_media", ran)  # `media --help` fetched once
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: chameleon {' '.join(argv)}"), out[:200]
