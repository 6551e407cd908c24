"""The ``herder`` command line (also ``python -m herder.runtime``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: herder COMMAND [options]

commands:
  demo      book trips through the travel-booking workflow under injected faults
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``herder`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from herder.runtime._demo import run_demo

        return run_demo(rest)
    sys.stderr.write(f"herder: unknown command {command!r}\n{USAGE}")
    return 2
