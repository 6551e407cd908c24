"""``herder bench``: run the benchmarks (throughput, or the peer suite) from a source checkout."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import TextIO

THROUGHPUT = pathlib.Path("benchmarks") / "throughput.py"
PEERS = pathlib.Path("benchmarks") / "peers.py"


def _find_script(relative: pathlib.Path) -> pathlib.Path | None:
    here = pathlib.Path(__file__).resolve().parent.parent  # the checkout, if installed -e
    for root in (pathlib.Path.cwd(), here):
        if (root / relative).is_file():
            return root / relative
    return None


def bench(argv: Sequence[str], out: TextIO) -> int:
    """Run ``benchmarks/throughput.py``, or with ``--peers`` first ``benchmarks/peers.py``.

    The rest of ``argv`` goes to the script (its defaults unless it says otherwise).
    """
    argv = list(argv)
    relative = THROUGHPUT
    if argv[:1] == ["--peers"]:
        relative, argv = PEERS, argv[1:]
    script = _find_script(relative)
    if script is None:  # a failed command says why on stderr, as every other one does
        sys.stderr.write(
            f"herder bench: it runs {relative}, which ships with the source, not the "
            "package: clone the repository and run `make bench` (or `herder bench` there)\n"
        )
        return 1
    out.write(f"running {script}\n")
    out.flush()
    return subprocess.run([sys.executable, str(script), *argv], check=False).returncode
