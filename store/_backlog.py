"""Reading a backlog of workflows raw, a chunk per read transaction: each workflow's
record with the records of its steps (the step keys start with the workflow's key and
``KEY_SEP``, so they are one range). Decoding is the caller's (``Reads.unfinished_chunks``,
which recovery consumes), outside the read transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb

from herder.store._keys import KEY_SEP, workflow_key

Raw = list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]]
"""Raw workflow records, each with its key and its raw step records."""


def scan_chunk(
    handles: Mapping[str, Any], txn: lmdb.Transaction, *, start: bytes, skip: bool, n: int
) -> tuple[Raw, bool]:
    """Up to ``n`` raw workflow records from ``start`` on (after it, with ``skip``), with
    their steps; and whether more may follow."""
    out: Raw = []
    cur = txn.cursor(db=handles["workflows"])
    steps = txn.cursor(db=handles["steps"])
    found = cur.set_range(start)
    while found:
        key = bytes(cur.key())
        if not (skip and key == start):
            if len(out) >= n:
                return out, True
            out.append((key, bytes(cur.value()), _raw_steps(steps, key)))
        found = cur.next()
    return out, False


def id_chunk(
    handles: Mapping[str, Any], txn: lmdb.Transaction, *, ids: list[str]
) -> tuple[Raw, bool]:
    """The raw records of the workflows ``ids`` that exist, with their steps."""
    out: Raw = []
    workflows = handles["workflows"]
    steps = txn.cursor(db=handles["steps"])
    for wid in ids:
        key = workflow_key(wid)
        value = txn.get(key, db=workflows)
        if value is not None:
            out.append((key, bytes(value), _raw_steps(steps, key)))
    return out, True


def _raw_steps(cur: lmdb.Cursor, wkey: bytes) -> list[tuple[bytes, bytes]]:
    prefix = wkey + KEY_SEP
    own: list[tuple[bytes, bytes]] = []
    at = cur.set_range(prefix)
    while at:
        skey = bytes(cur.key())
        if not skey.startswith(prefix):
            break
        own.append((skey, bytes(cur.value())))
        at = cur.next()
    return own
