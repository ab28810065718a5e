"""Every option of every verb has a help string (issue 24 item 11): the argparse tree of
`boxdepth` walked, and the exported-model runner's add_argument calls read from its source."""
from __future__ import annotations

import argparse
import ast
import inspect

from boxdepth.cli_args import build_parser
from boxdepth.export import runner


def _options_without_help(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_without_help(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_cli_option_has_help():
    assert list(_options_without_help(build_parser(), "boxdepth")) == []


def test_every_runner_option_has_help():
    calls = [n for n in ast.walk(ast.parse(inspect.getsource(runner)))
             if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"]
    assert calls
    missing = [ast.unparse(c.args[0]) for c in calls if not any(k.arg == "help" for k in c.keywords)]
    assert missing == []
