"""msgpack encoding with safe limits. Never pickle.

:func:`encode` turns plain data (None, bool, int, float, str, bytes, lists, tuples and maps
with str keys) into bytes and refuses anything else with :class:`EncodeError`.
:func:`normalize` checks a value at the door and returns it as it will read back.
:func:`decode` reads bytes back with bounded sizes and string-only map keys; any failure
becomes :class:`StoreCorrupt` naming the database and key it came from.
"""

from __future__ import annotations

from typing import Any

import msgpack

from herder.store._errors import EncodeError, StoreCorrupt

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Hard ceiling on one encoded record; configured input limits are far smaller."""


def encode(obj: Any, *, limit: int | None = None, what: str = "value") -> bytes:
    """Encode ``obj`` as msgpack; raise :class:`EncodeError` if it cannot be or is too big."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(
            f"{what} cannot be stored: {exc}; use plain data (None, bool, int, float, str, "
            "bytes, lists and dicts with str keys)"
        ) from exc
    ceiling = MAX_RECORD_BYTES if limit is None else limit
    if len(data) > ceiling:
        raise EncodeError(
            f"{what} is {len(data)} bytes encoded; the limit is {ceiling} bytes: "
            "store large payloads elsewhere and pass a reference"
        )
    return data


def decode(data: bytes, *, db: str, key: bytes) -> Any:
    """Decode one stored record; raise :class:`StoreCorrupt` naming ``db`` and ``key``."""
    if len(data) > MAX_RECORD_BYTES:
        raise StoreCorrupt(db, key, f"record is {len(data)} bytes, over {MAX_RECORD_BYTES}")
    try:
        # unpackb bounds every string/array/map length by the input's own size.
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers ExtraData, FormatError, StackError and bad UTF-8.
        raise StoreCorrupt(db, key, f"{type(exc).__name__}: {exc}") from exc


def normalize(obj: Any, *, limit: int | None = None, what: str = "value") -> Any:
    """``obj`` as it will read back from the store (tuples become lists, and so on).

    Raises :class:`EncodeError` for anything the store would refuse to keep or could not
    read back: unencodable values, values over ``limit`` bytes, and non-str map keys.
    """
    data = encode(obj, limit=limit, what=what)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except ValueError as exc:
        raise EncodeError(f"{what} cannot be stored: {exc}; map keys must be str") from exc
