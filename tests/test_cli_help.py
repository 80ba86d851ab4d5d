"""The CLI's help as a newcomer reads it: what the package does, the commands in the order a user
runs them, every option with its default and its valid values, and `distree --version`."""
import argparse
from importlib import metadata

import pytest

from distree.cli import COMMANDS, build_parser, main
from distree.runtime.faults import DEVICE_KINDS as KINDS

OTHERS = ("train-teacher", "train-students")  # their help is checked with their training options


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(command: str):
    """(parser, option action) of every option of a command but --help."""
    parser = subcommands()[command]
    return [(parser, a) for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_top_level_help_says_what_the_package_does_and_lists_the_commands_in_order():
    text = build_parser().format_help()
    assert "early-exit" in text and "parses arguments" not in text
    names = [c.replace("_", "-") for c in COMMANDS]
    positions = [text.index(f"    {n} ") if f"    {n} " in text else text.index(f"    {n}\n") for n in names]
    assert positions == sorted(positions)
    assert names[:4] == ["train-teacher", "partition", "train-students", "evaluate"]


@pytest.mark.parametrize("command", [c.replace("_", "-") for c in COMMANDS if c.replace("_", "-") not in OTHERS])
def test_every_option_has_help_with_its_default_and_its_choices(command):
    for parser, action in options(command):
        name = action.option_strings[-1]
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        assert text, f"{command} {name} has no help"
        if not action.required and not isinstance(action, argparse._StoreTrueAction):
            assert "default" in text, f"{command} {name}: no default in {text!r}"
        for choice in action.choices or ():
            assert str(choice) in text or str(choice) in (action.metavar or ""), f"{command} {name}: {choice}"


def test_deploy_help_names_every_fault_kind_with_its_syntax():
    text = subcommands()["deploy"].format_help()
    for kind in KINDS:
        assert f"{kind}:" in text, kind
    assert "@" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and metadata.version("distree") in capsys.readouterr().out
