"""Random transition batches agree with an in-memory dict model (bbolt-style simulation)."""

from __future__ import annotations

import pathlib
import tempfile
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herder.store import Delete, Expect, Put, Store, Transition, decode, encode

KEYS = [b"a", b"b", b"c", b"d"]
key = st.sampled_from(KEYS)
op = st.one_of(
    st.builds(lambda k, v: Put("steps", k, encode({"n": v})), key, st.integers(0, 3)),
    st.builds(lambda k: Delete("steps", k), key),
)
expect = st.one_of(
    st.builds(lambda k: Expect("steps", k), key),
    st.builds(lambda k: Expect("steps", k, exists=False), key),
    st.builds(lambda k, v: Expect("steps", k, "n", v), key, st.integers(0, 3)),
)
transition = st.builds(
    Transition,
    st.lists(op, min_size=1, max_size=3).map(tuple),
    st.lists(expect, max_size=2).map(tuple),
)


def model_apply(model: dict[bytes, Any], t: Transition) -> bool:
    for e in t.expect:
        present = e.key in model
        if not e.exists:
            if present:
                return False
        elif not present or (e.field is not None and model[e.key].get(e.field) != e.value):
            return False
    for o in t.ops:
        if isinstance(o, Put):
            model[o.key] = decode(o.value, db="steps", key=o.key)
        else:
            model.pop(o.key, None)
    return True


@pytest.mark.timeout(60)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(transition, min_size=1, max_size=8), min_size=1, max_size=5))
def test_random_batches_match_a_dict_model(batches: list[list[Transition]]) -> None:
    model: dict[bytes, Any] = {}
    with tempfile.TemporaryDirectory() as d, Store(pathlib.Path(d) / "s") as store:
        for batch in batches:
            done: Future[list[BaseException | None]] = Future()
            store.writer.submit_many(batch, done.set_result)
            outcomes = done.result(timeout=10)
            expected = [model_apply(model, t) for t in batch]
            assert [o is None for o in outcomes] == expected
            assert dict(store.scan("steps")) == model
