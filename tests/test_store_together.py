"""``Store.together``: reads only. Its read transaction stays open for the whole call, and a
commit that needs the map to grow waits until no read is open: a write waited for inside
it would wait for ever, so the writer (and ``close()``) are refused there at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from herder.store import InvalidInput, Put, Store, Transition, encode


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s", map_size=64 * 1024)


def test_a_write_inside_together_is_refused_at_once(store: Store) -> None:
    blob = b"x" * 4000
    try:

        def read_then_write() -> None:
            for i in range(200):  # far past 64 KiB: the map must grow (it hung here)
                put = Put("workflows", b"%05d" % i, encode(blob))
                store.writer.submit(Transition((put,))).result(timeout=5)

        with pytest.raises(InvalidInput, match=r"inside Store\.together"):
            store.together(read_then_write)
        store.writer.submit(Transition((Put("workflows", b"k", encode(blob)),))).result(5)
        assert store.together(lambda: store.get("workflows", b"k")) == blob  # (reads do)
    finally:
        store.close()


def test_close_inside_together_is_refused_and_works_after(store: Store) -> None:
    with pytest.raises(InvalidInput, match=r"close\(\) inside Store\.together"):
        store.together(store.close)
    store.close()
    assert store._closed
