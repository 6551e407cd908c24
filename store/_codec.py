"""msgpack encoding with safe limits. Never pickle.

:func:`encode` turns plain data (None, bool, int, float, str, bytes, lists, tuples and maps
with str keys) into bytes and refuses anything else with :class:`EncodeError`. A stored
value is the msgpack body followed by the body's CRC-32 (4 bytes, big-endian), so a record
damaged on disk (a flipped bit anywhere, a torn write) is noticed when it is read, not
taken for another valid value.
:func:`normalize` checks a user value at the door (str map keys, at most
:data:`MAX_DEPTH` levels, a size limit) and returns it as it will read back.
:func:`decode` reads bytes back with bounded sizes and string-only map keys; any failure
becomes :class:`StoreCorrupt` naming the database and key it came from.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from herder.store._errors import EncodeError, InvalidInput, StoreCorrupt
from herder.store._untrusted import MAX_TEXT_CHARS, describe, safe_repr, safe_str

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Hard ceiling on one encoded record; configured input limits are far smaller."""

MAX_VALUE_BYTES = MAX_RECORD_BYTES // 4
"""Ceiling of the configurable input/result limits, so a record holding one always fits."""

MAX_DEPTH = 100
"""Most nesting levels of a user value (input, result, heartbeat details).

A record wraps the value in a few levels of its own, and msgpack refuses more than 1024
levels in either direction, so a value must be refused at the door well before that: a
value accepted there but refused inside the Scheduler would fail a commit, not a call.
"""

_CRC = struct.Struct(">I")
_Packer = msgpack.Packer
_BUF_SIZE = 1024  # the Packer's first buffer; it grows as a value needs
_KEEP_BYTES = 1 << 20  # an encoder() lets its Packer go once it packed a larger value

_PLAIN_DATA = "use plain data (None, bool, int, float, str, bytes, lists and dicts with str keys)"


def encode(obj: Any, *, limit: int | None = None, what: str = "value") -> bytes:
    """Encode ``obj`` as msgpack plus checksum; :class:`EncodeError` if it cannot be or is
    too big (``limit`` counts the msgpack body)."""
    # The user's exception is described, not chained: it may raise when touched again.
    try:
        # A Packer per call (thread-safe, nothing kept) with a small first buffer: packb
        # builds one with a 256 KiB buffer and keyword arguments, 3x the cost of a record.
        body: bytes = _Packer(use_bin_type=True, buf_size=_BUF_SIZE).pack(obj)
    except BaseException as exc:  # a user object's method raised anything
        message = _refusal(exc)
    else:
        ceiling = MAX_RECORD_BYTES if limit is None else limit
        if len(body) <= ceiling:
            return body + _CRC.pack(zlib.crc32(body))
        message = (
            f"is {len(body)} bytes encoded; the limit is {ceiling} bytes: "
            "store large payloads elsewhere and pass a reference"
        )
    raise EncodeError(f"{what} {message}")


def encoder() -> Callable[[Any], bytes]:
    """:func:`encode` for one owner that encodes many small values of its own making (the
    Scheduler's records and history events): the same bytes, from a Packer it keeps
    (making one, and the checks of ``encode``'s options, are a third of the cost of a
    record). Only one thread at a time may call it. A value it cannot pack, or over
    :data:`MAX_RECORD_BYTES`, goes through :func:`encode` for its error; after one over
    1 MiB the Packer, whose buffer grew to its size, is let go."""
    packer = [_Packer(use_bin_type=True, buf_size=_BUF_SIZE)]
    crc, suffix = zlib.crc32, _CRC.pack

    def encode_own(obj: Any) -> bytes:
        try:
            body: bytes = packer[0].pack(obj)  # (a failed pack leaves the Packer empty)
        except Exception:
            return encode(obj)  # raises what it could not pack as an EncodeError
        if len(body) > _KEEP_BYTES:
            packer[0] = _Packer(use_bin_type=True, buf_size=_BUF_SIZE)
            if len(body) > MAX_RECORD_BYTES:
                return encode(obj)
        return body + suffix(crc(body))

    return encode_own


def _refusal(exc: BaseException) -> str:
    """Why a value cannot be stored, from what packing it raised."""
    if not isinstance(exc, TypeError | ValueError | OverflowError):
        return f"cannot be stored: reading it raised {describe(exc)}; {_PLAIN_DATA}"
    if type(exc) is OverflowError and "Integer value" in safe_str(exc):  # (msgpack's)
        return (
            "cannot be stored: an int in it is out of range (from -2**63 to 2**64 - 1 "
            "can be stored): pass it as a str"
        )
    message = safe_str(exc)  # may come from a user object (a dict subclass's items())
    if "recursion limit" in message:
        return (
            "cannot be stored: it is nested too deeply or contains itself; "
            f"at most {MAX_DEPTH} levels of plain data can be stored"
        )
    return f"cannot be stored: {message}; {_PLAIN_DATA}"


def decode(data: bytes, *, db: str, key: bytes) -> Any:
    """Decode one stored record; raise :class:`StoreCorrupt` naming ``db`` and ``key``."""
    if len(data) > MAX_RECORD_BYTES + _CRC.size:
        raise StoreCorrupt(db, key, f"record is {len(data)} bytes, over {MAX_RECORD_BYTES}")
    if len(data) <= _CRC.size:
        raise StoreCorrupt(db, key, f"record of {len(data)} bytes has no room for a body")
    body = memoryview(data)[: -_CRC.size]
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(body) != stored:
        raise StoreCorrupt(
            db, key, "checksum mismatch: the record was damaged on disk (or not written by herder)"
        )
    try:
        # unpackb bounds every string/array/map length by the input's own size.
        return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ValueError covers ExtraData, FormatError, StackError and bad UTF-8.
        raise StoreCorrupt(db, key, f"{type(exc).__name__}: {exc}") from exc


def peek(data: bytes, fields: Mapping[int, str]) -> dict[str, Any]:
    """Some fields of a stored record in one pass, decoding only what comes before the
    last of them (an id and a name, not the input after them): for each ``index: key`` of
    ``fields``, item ``index`` of an array record, the value under ``key`` of a map one;
    a field the record lacks is left out. The checksum is not checked: for a scan that
    only tests a record (one damaged is met when it is read whole). ValueError if its
    bytes do not decode that far."""
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=True, read_size=4096)
    found: dict[str, Any] = {}
    try:
        try:
            items = unpacker.read_array_header()
        except ValueError:  # not an array: a map (schema 2), or no record at all
            items = None
        if items is not None:
            for index in range(min(items, max(fields, default=-1) + 1)):
                if index in fields:
                    found[fields[index]] = unpacker.unpack()
                else:
                    unpacker.skip()
            return found
        wanted = set(fields.values())
        for _ in range(unpacker.read_map_header()):
            if not wanted:
                break
            key = unpacker.unpack()
            if type(key) is str and key in wanted:
                found[key] = unpacker.unpack()
                wanted.discard(key)
            else:
                unpacker.skip()
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    return found


def normalize(obj: Any, *, limit: int | None = None, what: str = "value") -> Any:
    """``obj`` as it will read back from the store (tuples become lists, and so on).

    Raises :class:`EncodeError` for anything the store would refuse to keep or could not
    read back: unencodable values, values over ``limit`` bytes, and non-str map keys.
    """
    data = memoryview(encode(obj, limit=limit, what=what))[: -_CRC.size]  # one call, not two
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except ValueError as exc:  # (a key strict_map_key refused: named as the caller wrote it)
        found = _bad_key(obj)
        if found is not None or "map key" in str(exc):
            message = f"{what} cannot be stored: {found or exc}; map keys must be str"
            raise EncodeError(message) from exc
        # Else the bytes do not read back (extra data, or too few): a list or dict subclass
        # in it packed another number of items than its len() had announced.
        raise EncodeError(
            f"{what} cannot be stored: a list or dict in it gives another number of items "
            f"than its len() says; {_PLAIN_DATA}"
        ) from None
    if type(value) is dict:  # the usual value, a flat map: checked here (one call less)
        for key, item in value.items():
            if type(key) is not str or type(item) in _NESTED:
                _check_plain(value, what)
                break
    elif type(value) in _NESTED:
        _check_plain(value, what)
    return value


def private_copy(value: Any) -> Any:
    """A copy of a value from :func:`normalize` that shares no map or list with it (its
    str, bytes and numbers cannot change): what user code gets, so that mutating it
    changes neither the value kept (and written again) nor what the next caller sees.
    ~0.3 us for a small flat map."""
    kind = type(value)
    if kind is dict:
        out = value.copy()
        for key, item in out.items():  # (values replaced in place: the keys do not change)
            if type(item) is dict or type(item) is list:
                out[key] = private_copy(item)
        return out
    if kind is list:
        return [private_copy(item) if type(item) in _CONTAINERS else item for item in value]
    return value


_CONTAINERS = (dict, list)
_NESTED = (dict, list, msgpack.ExtType, msgpack.Timestamp)
"""Types whose values :func:`_check_plain` must look into (or refuse)."""


def _bad_key(obj: Any) -> str | None:
    """The first map key in ``obj`` that is not a str, as :func:`_check_plain` says it (a
    tuple as a tuple, not the list msgpack made of it); None if none is found."""
    stack, seen = [obj], 0
    try:  # (user code: a dict subclass's items() may raise anything)
        while stack and seen < 100_000:
            node, seen = stack.pop(), seen + 1
            if isinstance(node, dict):
                for key, item in node.items():
                    if type(key) is not str:
                        return _key_refusal(key)
                    stack.append(item)
            elif isinstance(node, list | tuple):
                stack.extend(node)
    except BaseException:
        return None
    return None


def _key_refusal(key: object) -> str:
    """How a refusal names a map key that is not a str."""
    return f"map key {safe_repr(key):.80} is of type {type(key).__name__}"


def _check_plain(value: Any, what: str) -> None:
    """Refuse maps with non-str keys (bytes get past ``strict_map_key``), msgpack extension
    types, and values nested deeper than :data:`MAX_DEPTH`. Iterative, so a deep value
    cannot exhaust the Python stack here either."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise EncodeError(
                f"{what} is nested more than {MAX_DEPTH} levels deep; flatten it or store "
                "it elsewhere and pass a reference"
            )
        if type(node) is dict:
            for key in node:
                if type(key) is not str:
                    raise EncodeError(
                        f"{what} cannot be stored: {_key_refusal(key)}; map keys must be str"
                    )
            items: Any = node.values()
        elif type(node) is list:
            items = node
        else:
            raise EncodeError(
                f"{what} cannot be stored: {type(node).__name__} is a msgpack extension; "
                + _PLAIN_DATA
            )
        for item in items:
            if type(item) in _NESTED:
                stack.append((item, depth + 1))


def legacy_int(data: bytes) -> int | None:
    """The int a value written before checksums (schema 1: bare msgpack) holds, if it is
    one; so an old store is told apart from a damaged one."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return value if type(value) is int else None


def check_text(what: str, value: object, limit: int = MAX_TEXT_CHARS) -> None:
    """Refuse (:class:`InvalidInput`) a note that is not None or a storable str of at
    most ``limit`` characters (an operator's ``who``/``why``)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a str or None, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidInput(f"{what} is {len(value)} characters; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid UTF-8: {value!r:.80}") from exc
