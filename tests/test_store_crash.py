"""Cross-process durability: SIGKILL never loses an acknowledged transition, and a
read-only reader in another process sees only whole transitions."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import threading

import pytest

from herder.store import Put, Store, Transition, encode, timer_key

CHILD = pathlib.Path(__file__).with_name("store_child.py")


@pytest.mark.timeout(60)
def test_sigkill_never_loses_an_acknowledged_transition(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s"
    rng = random.Random()
    acked_total: set[str] = set()
    for round_ in range(3):
        stop_after = rng.randint(200, 2000)
        child = subprocess.Popen(
            [sys.executable, str(CHILD), "crash", str(path), "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        acked: list[str] = []
        for line in child.stdout:
            acked.append(line.strip())
            if len(acked) >= stop_after:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        assert len(acked) == stop_after, "child died before the kill"
        with Store(path) as store:
            assert store.incarnation == 2 * round_ + 2  # one child open, one parent open per round
            missing = [k for k in acked if store.get("workflows", k.encode()) is None]
            assert missing == [], f"round {round_}: lost {len(missing)} acked of {len(acked)}"
            acked_total.update(acked)
            assert store.count("workflows") >= len(acked_total)


@pytest.mark.timeout(60)
def test_a_readonly_reader_in_another_process_sees_whole_transitions(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "s"
    target = 4000  # keys the reader must have seen before it stops
    store = Store(path, map_size=256 * 1024)  # small, so the map grows under the reader
    stop = threading.Event()
    errors: list[BaseException] = []

    def write_pairs() -> None:
        i = 0
        while not stop.is_set():
            # both timers of a pair land in one transition; the reader must never split them
            batch = [
                Transition(
                    tuple(
                        Put("timers", timer_key(i + j, f"w{i + j:07d}", side), encode([i, side]))
                        for side in ("a", "b")
                    )
                )
                for j in range(50)
            ]
            futures = [store.writer.submit(t) for t in batch]
            errors.extend(e for f in futures if (e := f.exception(timeout=20)) is not None)
            i += 50

    writer = threading.Thread(target=write_pairs)
    reader = subprocess.Popen(
        [sys.executable, str(CHILD), "reader", str(path), str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"  # it holds the store open now
        writer.start()
        out, err = reader.communicate(timeout=50)
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        store.close()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert errors == []
    assert reader.returncode == 0, err
    verdict = out.split()
    assert verdict[0] == "ok", out
    assert int(verdict[2]) >= target
    assert int(verdict[1]) > 1  # it read more than one snapshot while the writer ran
