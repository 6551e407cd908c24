"""The ``started`` database: every workflow by the time it was created, for paging.

``workflows`` is keyed by id, which says nothing about age. Listing the newest workflows
of a store holding a million (the web console) must not read them all, so each start
also writes ``created milliseconds (8 bytes, big-endian) + id`` here, in the same
transaction as the workflow record. The value is the workflow's name (so a name filter
needs no record read). Workflow records are never deleted, so the index only grows,
once per workflow, and a reverse cursor walk from any time lists newest first.

Stores written before this index existed lack it (``ADDED_LATER``): readers see it empty
and fall back to id order.
"""

from __future__ import annotations

import struct

from herder.store._codec import encode
from herder.store._records import workflow_key
from herder.store._writer import Put

STARTED_DB = "started"

_MS = struct.Struct(">Q")


def started_key(created: float, workflow_id: str) -> bytes:
    """The ``started`` key of a workflow created at ``created`` (seconds since the epoch)."""
    return _MS.pack(max(0, int(created * 1000))) + workflow_key(workflow_id)


def split_started_key(key: bytes) -> tuple[float, str]:
    """(created seconds, workflow id) of a ``started`` key."""
    return _MS.unpack_from(key)[0] / 1000, key[_MS.size :].decode("utf-8")


def time_key(created: float) -> bytes:
    """The smallest key of workflows created at or after ``created``."""
    return _MS.pack(max(0, int(created * 1000)))


def started_put(created: float, workflow_id: str, name: str) -> Put:
    """The put that indexes a new workflow."""
    return Put(STARTED_DB, started_key(created, workflow_id), encode(name))
