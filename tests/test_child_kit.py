"""The child-process kit (``_child_kit.py``): lines said by many threads arrive whole,
and a line that never comes says what happened to the child."""

from __future__ import annotations

import pathlib
import re

import pytest
from _child_kit import Child

TESTS = pathlib.Path(__file__).parent
THREADS, LINES = 4, 3000

# Four threads and the main thread say lines at once, GIL switches as often as possible.
CHATTY = f"""
import sys, threading
from _child_kit import say
sys.setswitchinterval(1e-6)
go = threading.Barrier({THREADS + 1})
def ran(i):
    go.wait()
    for n in range({LINES}):
        say(f"ran tick@{{i}}-{{n}}")
threads = [threading.Thread(target=ran, args=(i,)) for i in range({THREADS})]
for t in threads:
    t.start()
go.wait()
for n in range({LINES}):
    say("ready")
"""


def test_lines_said_by_many_threads_at_once_arrive_whole() -> None:
    child = Child(["-c", CHATTY], cwd=TESTS)
    assert child.proc.wait(timeout=30.0) == 0, child.stderr()
    lines = []
    while (line := child.next_line(float("inf"))) is not None:
        lines.append(line)
    merged = [line for line in lines if not re.fullmatch(r"ready|ran tick@\d+-\d+", line)]
    assert merged == []  # with print() some 1 to 10% were ("readyran tick@2-0", "")
    assert lines.count("ready") == LINES
    assert len(lines) == LINES * (THREADS + 1)


def test_a_child_that_exits_first_is_reported_with_its_code_and_stderr() -> None:
    child = Child(
        ["-c", "import sys; print('hello', flush=True); sys.exit('it went wrong')"],
        env={"HERDER_CRASH_AT": "writer.after_commit:3"},
        label="round 4",
    )
    with pytest.raises(AssertionError) as failed:
        child.wait_for("ready", 30.0)
    message = str(failed.value)
    assert "no line 'ready' in " in message
    assert "its stdout closed: round 4 (pid " in message
    assert "HERDER_CRASH_AT=writer.after_commit:3" in message
    assert "exited with code 1" in message
    assert "['hello']" in message
    assert message.endswith("stderr:\nit went wrong")  # read once all of it had come


def test_a_silent_child_is_ended_and_reported_with_its_threads_stacks() -> None:
    child = Child(["-c", "import threading\nprint('hello', flush=True)\nthreading.Event().wait()"])
    with pytest.raises(AssertionError) as failed:
        child.wait_for("ready", 0.5)
    message = str(failed.value)
    assert re.search(r"no line 'ready' in \d+\.\d s, silent: child \(pid \d+, no extra", message)
    assert "still running; sent SIGABRT (stacks below), it ended with code -6" in message
    assert "Current thread" in message
    assert 'File "<string>", line 3' in message  # where its main thread waits
    assert child.proc.poll() == -6
