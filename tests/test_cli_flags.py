"""The CLI's shared contract: every flag has help, and --json / -v / -q behave the same on every command."""

from __future__ import annotations

import argparse
import logging

import pytest

from toolkit.cli.common import configure_logging
from toolkit.cli.main import build_parser


def _commands(parser: argparse.ArgumentParser, name: str = "toolkit"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from _commands(child, f"{name} {child_name}")


COMMANDS = dict(_commands(build_parser()))


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "toolkit"])
def test_every_flag_has_help(name):
    missing = [a.option_strings or a.dest for a in COMMANDS[name]._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, f"{name}: flags without help: {missing}"


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "toolkit"])
def test_every_command_takes_json_verbose_quiet(name):
    options = {o for a in COMMANDS[name]._actions for o in a.option_strings}
    assert {"--json", "-v", "--verbose", "-q", "--quiet"} <= options


def test_logging_levels_follow_v_and_q():
    log = logging.getLogger("toolkit")
    try:
        configure_logging()
        assert log.level == logging.INFO
        configure_logging(quiet=True)
        assert log.level == logging.WARNING
        configure_logging(verbose=1)
        assert log.level == logging.DEBUG
    finally:
        configure_logging()


def test_quiet_hides_info_but_not_warnings(capsys):
    log = logging.getLogger("toolkit.some_stage")
    try:
        configure_logging(quiet=True)
        log.info("a progress note")
        log.warning("a real problem")
        err = capsys.readouterr().err
        assert "a real problem" in err and "a progress note" not in err
    finally:
        configure_logging()


def test_limit_says_the_same_in_eval_and_search():
    """--limit 0 is every example in both commands, and their help says so in the same words."""
    helps = {name: next(a.help for a in COMMANDS[f"toolkit {name}"]._actions if "--limit" in a.option_strings)
             for name in ("eval", "search")}
    assert helps["eval"] == helps["search"] and "0 = all" in helps["eval"]
    assert COMMANDS["toolkit eval"].parse_args(["--limit", "0"]).limit == 0
