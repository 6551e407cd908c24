"""LMDB's two meta pages, read from ``data.mdb`` with plain file reads.

LMDB maps the whole file and touches a page only when a read needs it, so a file cut
short (a full disk during a copy, a bad restore) is found by ``SIGBUS`` in the middle of
whatever read first reached past its end: every command dies with no message. The meta
pages say how many pages the newest commit uses, so :func:`check_not_truncated` can
refuse such a file before it is mapped. ``herder compact`` uses :func:`last_txnid` to
learn, without opening an environment (which would change its locks), whether anyone
committed while it copied.

Layout (lmdb.h, 64-bit builds): a 16-byte page header, then ``MDB_meta``: magic (u32),
version (u32), address (u64), map size (u64), two 48-byte ``MDB_db`` (the first one's
leading u32 holds the page size), last page number (u64) and transaction id (u64).
"""

from __future__ import annotations

import os
import pathlib
import struct
from typing import NamedTuple

from herder.store._errors import StoreError

MAGIC = 0xBEEFC0DE
_HEADER = 16
_MAGIC = struct.Struct("<I")
_PSIZE_AT = _HEADER + 24  # MDB_meta.mm_dbs[0].md_pad: the page size
_LAST_PG_AT = _HEADER + 120  # MDB_meta.mm_last_pg
_TXNID_AT = _HEADER + 128  # MDB_meta.mm_txnid
_U64 = struct.Struct("<Q")
_MIN_PAGE = 512


class Meta(NamedTuple):
    """One meta page: the newest commit it describes."""

    txnid: int
    last_pg: int
    psize: int


def newest_meta(data: pathlib.Path) -> Meta | None:
    """The meta page of the newest commit in ``data`` (a ``data.mdb``), or None when
    the file holds no valid one (empty, foreign, damaged: LMDB says which on open)."""
    with open(data, "rb") as f:
        first = f.read(_TXNID_AT + 8)
        if len(first) < _TXNID_AT + 8 or _MAGIC.unpack_from(first, _HEADER)[0] != MAGIC:
            return None
        (psize,) = _MAGIC.unpack_from(first, _PSIZE_AT)
        if psize < _MIN_PAGE or psize & (psize - 1):
            return None
        f.seek(psize)
        second = f.read(_TXNID_AT + 8)
    metas = [_meta(first, psize)]
    if len(second) == _TXNID_AT + 8 and _MAGIC.unpack_from(second, _HEADER)[0] == MAGIC:
        metas.append(_meta(second, psize))
    return max(metas)


def _meta(page: bytes, psize: int) -> Meta:
    (txnid,) = _U64.unpack_from(page, _TXNID_AT)
    (last_pg,) = _U64.unpack_from(page, _LAST_PG_AT)
    return Meta(txnid, last_pg, psize)


def last_txnid(data: pathlib.Path) -> int | None:
    """The id of the newest commit in ``data`` (None: no valid meta page)."""
    meta = newest_meta(data)
    return None if meta is None else meta.txnid


def check_not_truncated(root: pathlib.Path) -> None:
    """Refuse (:class:`StoreError`) a store whose ``data.mdb`` is shorter than its newest
    commit needs; nothing to check when there is no such file or no valid meta page, nor
    when nothing was ever committed (:func:`never_committed`: the opener's to say)."""
    data = root / "data.mdb"
    try:
        meta = newest_meta(data)
        size = os.stat(data).st_size  # (after the metas: a live writer only grows it)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read store {root}: {exc}") from exc
    if meta is None or meta.txnid == 0:
        return
    needed = (meta.last_pg + 1) * meta.psize
    if size < needed:
        raise StoreError(
            f"store {root} is damaged: data.mdb is {size:,} bytes, but its newest commit "
            f"(transaction {meta.txnid}) needs {needed:,}; the file was cut short (a full "
            "disk during a copy, an incomplete restore). Restore a backup"
        )


def never_committed(root: pathlib.Path) -> bool:
    """True if ``data.mdb`` holds no commit and is not whole: empty, or with the first of
    its two meta pages (transaction 0) only. LMDB writes them when it creates the file,
    before any commit: a full disk there (a runtime's first open of a new store) left
    such a file, which LMDB refuses to open ("Bad file descriptor", "not an LMDB file"),
    and readers called it damaged, though nothing was ever in it."""
    data = root / "data.mdb"
    try:
        size = os.stat(data).st_size
        meta = newest_meta(data)
    except OSError:
        return False  # (the open says what is wrong)
    return size == 0 or (meta is not None and meta.txnid == 0 and size < 2 * meta.psize)
