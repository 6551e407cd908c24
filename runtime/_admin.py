"""``herder retry``/``herder cancel`` and ``herder bench``.

Retry and cancel change a workflow, so they need the runtime that runs it: only that
process holds the store's writer lock, knows the workflow definitions and has the agents
registered. There is no channel to a running daemon yet, so the CLI says what to do
instead of acting:

- a runtime holds the store: call ``rt.retry(id)`` / ``rt.cancel(id)`` inside it (e.g.
  from an admin hook of the daemon);
- no runtime holds it: open ``Runtime(path)`` in the program that registers the
  workflow's agents and definition, then call the method; a bare CLI cannot, because a
  workflow resumes only once its definition and agents are registered.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import TextIO

from herder.store import Store, is_held

THROUGHPUT = pathlib.Path("benchmarks") / "throughput.py"
PEERS = pathlib.Path("benchmarks") / "peers.py"


def refuse_operation(command: str, store_path: str, workflow_id: str) -> int:
    """Explain why ``herder retry|cancel`` cannot act here and what to do; returns 1."""
    if is_held(store_path):
        why = (
            f"a runtime holds the store {store_path}; call rt.{command}({workflow_id!r}) in "
            "that process (the CLI has no channel to a running runtime yet)"
        )
    else:
        with Store(store_path, readonly=True) as store:
            known = store.get_workflow(workflow_id) is not None
        why = (
            f"no runtime holds the store {store_path}, and the CLI cannot run one: "
            f"{command} needs the workflow's definition and agents registered. Open "
            f"Runtime({store_path!r}) in the program that registers them and call "
            f"rt.{command}({workflow_id!r})"
        )
        if not known:
            why = f"no workflow with id {workflow_id!r} in {store_path}"
    sys.stderr.write(f"herder {command}: {why}\n")
    return 1


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
    if script is None:
        out.write(
            f"herder bench runs {relative}, which ships with the source, not the "
            "package: clone the repository and run `make bench` (or `herder bench` there)\n"
        )
        return 1
    out.write(f"running {script}\n")
    out.flush()
    return subprocess.run([sys.executable, str(script), *argv], check=False).returncode
