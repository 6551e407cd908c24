"""``herder COMMAND --help`` tells a user what they get when they leave an option out."""

from __future__ import annotations

import argparse

from herder.runtime._cli import _parser
from herder.runtime._demo import _parser as _demo_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {**sub.choices, "demo": _demo_parser()}


def test_every_option_with_a_default_shows_it_in_its_help() -> None:
    # `herder run --help` said "--lease LEASE  lease seconds": the 5 s a unit runs with
    # (and the 30 s drain, handoff's 30 s deadline and 60 s wait, the operator commands'
    # 30 s) were in no help text and mostly in no page either.
    missing = []
    for name, parser in _commands().items():
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue  # nothing to say: the option is off or empty when left out
            shown = parser._get_formatter()._expand_help(action)
            if "default" not in shown or (
                isinstance(action.default, int | float) and str(action.default) not in shown
            ):
                missing.append(f"herder {name} {action.option_strings[0]}: {shown!r}")
    assert missing == []


def test_no_help_text_shows_docstring_markup() -> None:
    # `herder demo --help` began "``herder demo``: book trips ...": the module docstring's
    # reST, shown as it is.
    shown = {name: parser.format_help() for name, parser in _commands().items()}
    shown["herder"] = _parser().format_help()
    assert [name for name, text in shown.items() if "``" in text or ":class:" in text] == []
