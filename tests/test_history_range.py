"""A window of a workflow's history read by its key range (``read_history``'s ``since``
and ``before``), and its sequence numbers read from the keys alone (``history_seqs``):
what the console's workflow page reads instead of the whole history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from herder.store import (
    KEY_SEP,
    Put,
    Store,
    Transition,
    history_put,
    history_seqs,
    read_history,
    workflow_key,
)

pytestmark = pytest.mark.timeout(60)


def event(seq: int) -> dict[str, object]:
    return {"kind": "workflow", "t": 1_700_000_000.0 + seq, "from": None, "to": "RUNNING"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store") as st:
        ops = [history_put("a", seq, event(seq)) for seq in range(1, 51) if seq != 20]
        ops += [history_put("ab", seq, event(seq)) for seq in range(1, 5)]  # (a's prefix)
        ops.append(Put("history", history_put("a", 20, {}).key, b"no event"))  # damaged
        ops.append(Put("history", workflow_key("a") + KEY_SEP + b"xyz", b"x"))  # no event key
        st.writer.submit(Transition(ops=tuple(ops))).result(timeout=10)
        yield st


def test_the_seqs_are_the_whole_historys(store: Store) -> None:
    whole = read_history(store, "a")
    assert [e["seq"] for e in whole] == list(range(1, 51)) == list(history_seqs(store, "a"))
    assert whole[19]["kind"] == "damaged"  # (in its place)
    assert list(history_seqs(store, "ab")) == [1, 2, 3, 4]
    assert list(history_seqs(store, "nobody")) == [] == read_history(store, "nobody", since=3)


@pytest.mark.parametrize(
    ("since", "before", "expected"),
    [
        (10, 30, range(10, 30)),
        (0, None, range(1, 51)),
        (45, None, range(45, 51)),
        (0, 5, range(1, 5)),
        (20, 21, [20]),  # (the damaged one)
        (30, 30, []),
        (60, None, []),
        (0, 0, []),
        (-5, 2**70, range(1, 51)),  # (out of a seq's range: no bound)
        (2**70, None, []),
    ],
)
def test_a_window_is_its_key_range(
    store: Store, since: int, before: int | None, expected: range | list[int]
) -> None:
    whole = {e["seq"]: e for e in read_history(store, "a")}
    window = read_history(store, "a", since=since, before=before)
    assert window == [whole[seq] for seq in expected]


def test_a_window_reads_no_event_outside_it(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from herder.store import _history

    decoded: list[bytes] = []
    real = _history.decode

    def counted(data: bytes, *, db: str, key: bytes) -> object:
        decoded.append(key)
        return real(data, db=db, key=key)

    monkeypatch.setattr(_history, "decode", counted)
    assert len(read_history(store, "a", since=40, before=43)) == 3
    assert len(decoded) == 3
    decoded.clear()
    assert len(list(history_seqs(store, "a"))) == 50
    assert decoded == []
