"""Options several ``herder`` subcommands share: ``--store`` (default ``$HERDER_STORE``)
and ``--json``; and the argument types that refuse a bad number as a usage error."""

from __future__ import annotations

import argparse
import datetime
import getpass
import math
import os
import re
import time
from collections.abc import Callable

from herder.runtime._config import RuntimeConfig
from herder.store import MAX_SECONDS, InvalidInput

STORE_ENV = "HERDER_STORE"
"""The environment variable ``--store`` defaults to."""


def add_store(cmd: argparse.ArgumentParser) -> None:
    """``--store DIR``: required unless ``$HERDER_STORE`` names the store. A leading
    ``~`` is the home directory: no shell expands it in ``--store=~/x``, a systemd unit's
    ``ExecStart=`` or ``Environment=``, and a directory named ``~`` was made instead."""
    default = os.environ.get(STORE_ENV) or None
    cmd.add_argument(
        "--store",
        type=os.path.expanduser,  # (argparse applies it to the default, a str, too)
        default=default,
        help=f"the store directory (default: ${STORE_ENV}"
        + (f", now {default})" if default else ", unset)"),
    )
    cmd.set_defaults(store_parser=cmd)  # (main reports a missing one: see require_store)


def require_store(args: argparse.Namespace) -> None:
    """A usage error (exit 2) when a command that needs a store was given none."""
    parser = getattr(args, "store_parser", None)
    if parser is not None and not args.store:
        parser.error(f"--store DIR is required (or set ${STORE_ENV} to the store directory)")


def operator_name(given: str | None = None) -> str:
    """Who acts: ``given`` (``--who``), else ``$USER``, else the login name, else ``uid N``
    (a container's uid may have no name: no passwd entry, no ``$USER``)."""
    if given:
        return given
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # (getpwuid found no entry: KeyError, OSError from 3.13)
        return f"uid {os.getuid()}"


def add_json(cmd: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")


def seconds_arg(text: str) -> float:
    """A number of seconds >= 0 (argparse reports a refusal as a usage error, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def deadline_arg(text: str) -> float:
    """:func:`seconds_arg` of at most ten years, as ``rt.handoff(deadline=...)`` takes."""
    value = seconds_arg(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than ten years ({MAX_SECONDS:.0f} s): give the seconds running "
            "attempts may take to finish"
        )
    return value


def lease_arg(text: str) -> float:
    """A lease: a number of seconds > 0 that the runtime takes (at most ten years, at
    least two of its sweeps: :class:`RuntimeConfig` says why). argparse reports a refusal
    as a usage error, exit 2, before the app is imported."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    try:
        RuntimeConfig(lease=value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return value


def app_arg(text: str) -> str:
    """``module:factory`` (``herder run --app``): its shape; importing it is the run's."""
    module, _, factory = text.partition(":")
    if not module or not factory:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not module:factory: name the module (importable from the working "
            "directory) and its function that registers, as in ha_app:build"
        )
    return text


def parse_when(text: str, now: float | None = None, *, age: bool = False) -> float:
    """A point in time from the CLI: a duration back from now (``90s``, ``30m``, ``2h``,
    ``7d``, ``2w``) or an ISO date/time (naive means local time); ``age``: the duration
    only (a date is refused, however it is written)."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    parsed = None
    if match is None and age:
        raise InvalidInput(
            f"{text!r} is not an age: give a number and a unit (90s, 30m, 2h, 7d, 2w)"
        )
    if match is None:
        try:
            parsed = datetime.datetime.fromisoformat(text.strip())
        except ValueError:
            raise InvalidInput(
                f"{text!r} is neither a duration (90s, 30m, 2h, 7d, 2w) nor an "
                "ISO date/time (2026-12-01 or 2026-12-01T08:00)"
            ) from None
    try:
        if match is not None:
            when = now - float(match.group(1)) * _UNIT[match.group(2)]
        else:
            assert parsed is not None
            when = parsed.timestamp()
        datetime.datetime.fromtimestamp(when)  # it is shown as a date: it must be one
    except (ValueError, OverflowError, OSError):  # (the ways of saying out of range)
        instead = "a shorter duration" if match is not None else "a later one"
        raise InvalidInput(f"{text!r} is out of the range of dates; give {instead}") from None
    return when


_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def when_arg(*, age: bool = False) -> Callable[[str], float]:
    """A point in time (:func:`parse_when`: a duration back from now or an ISO
    date/time) as an argparse type, so a bad one is a usage error (exit 2). With
    ``age``, an age instead: a duration with its unit only (a date, or a bare number, is
    refused), as seconds, so its owner can take it back from its own clock."""

    def parse(text: str) -> float:
        now = time.time()
        try:
            when = parse_when(text, now, age=age)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return round(now - when, 6) if age else when

    return parse


def retention_arg(text: str) -> float | None:
    """``herder run --retention``: an age (:func:`when_arg`'s: 7d, 12h), or ``none``: keep
    every finished workflow (argparse reports a refusal as a usage error, exit 2)."""
    if text.strip().lower() == "none":
        return None
    try:
        return when_arg(age=True)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or none to keep every one") from None


def count_arg(text: str) -> int:
    """An int >= 0 (argparse reports a refusal as a usage error, exit 2)."""
    return _whole(text, 0)


def positive_arg(text: str) -> int:
    """An int >= 1 (argparse reports a refusal as a usage error, exit 2)."""
    return _whole(text, 1)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {least}")
    return value
