"""``--help`` of the three commands: every ``l2s-bids`` option shows its default, the help ends
with examples, ``--output-spaces`` says registration is affine only, and no reST markup leaks
into any command's help."""

from __future__ import annotations

import argparse

import pytest

from l2s_pipelines.bids_app import cli, demo, train_cli


def test_every_option_shows_its_default_and_help_ends_with_examples():
    parser = cli.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            assert "default" in formatter._expand_help(action), action.option_strings
    text = parser.format_help()
    tail = text[text.index("examples:"):]
    assert tail.count("l2s-bids ") >= 3 and text.rstrip().endswith(tail.rstrip())
    spaces = next(a for a in parser._actions if "--output-spaces" in a.option_strings)
    assert "affine only" in spaces.help


@pytest.mark.parametrize("build", [cli.build_parser, train_cli.build_parser, demo._parser])
def test_help_prints_no_rest_markup(build):
    text = build().format_help()
    assert "`" not in text and ":func:" not in text
