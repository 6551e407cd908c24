"""``herder ui``: the web console (``runtime/ui``), imported only when it runs."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from herder.runtime._cli_args import add_store


def add_parsers(sub: Any) -> None:
    """Add ``ui``."""
    ui = sub.add_parser("ui", help="serve the web console of a store (see docs/console.md)")
    add_store(ui)
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ui.add_argument("--port", type=_port, default=8700, help="port (default 8700; 0: any free)")
    ui.add_argument(
        "--token",
        help="token for actions (default: $HERDER_UI_TOKEN, which unlike this option is not "
        "shown by ps; else a random one)",
    )
    ui.add_argument(
        "--allow-host",
        action="append",
        default=[],
        type=_host,
        metavar="NAME",
        help="also answer requests for this host name (repeatable; see docs/console.md)",
    )
    ui.set_defaults(func=_ui)


def _ui(args: argparse.Namespace, out: TextIO) -> int:
    from herder.runtime.ui._main import run_console

    return run_console(
        args.store, args.host, args.port, args.token, out, allow_hosts=args.allow_host
    )


def _host(text: str) -> str:
    """A host name for ``--allow-host`` (a refusal is a usage error, exit 2)."""
    from herder.runtime.ui._guard import host_name

    try:
        return host_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    """A TCP port (argparse reports a refusal as a usage error, exit 2)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use 0..65535 (0: any free one)")
    return port
