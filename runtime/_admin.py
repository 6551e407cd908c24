"""``herder bench``: run the throughput benchmark from a source checkout."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import TextIO

THROUGHPUT = pathlib.Path("benchmarks") / "throughput.py"


def _find_throughput() -> pathlib.Path | None:
    here = pathlib.Path(__file__).resolve().parent.parent  # the checkout, if installed -e
    for root in (pathlib.Path.cwd(), here):
        if (root / THROUGHPUT).is_file():
            return root / THROUGHPUT
    return None


def bench(argv: Sequence[str], out: TextIO) -> int:
    """Run ``benchmarks/throughput.py`` (its defaults unless ``argv`` says otherwise)."""
    script = _find_throughput()
    if script is None:
        out.write(
            "herder bench runs benchmarks/throughput.py, which ships with the source, not the "
            "package: clone the repository and run `make bench` (or `herder bench` there)\n"
        )
        return 1
    out.write(f"running {script}\n")
    out.flush()
    return subprocess.run([sys.executable, str(script), *argv], check=False).returncode
