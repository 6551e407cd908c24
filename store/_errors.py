"""The error hierarchy shared by every layer of herder.

::

    HerderError                      root: ``except HerderError`` catches everything herder raises
    ├── InvalidInput (ValueError)    bad input refused at the door, nothing written
    │   └── EncodeError              a value msgpack cannot encode, or one over a size limit
    ├── MissingExtra (ImportError)   an optional dependency is not installed; names the extra
    ├── TimedOut (TimeoutError)      a wait ran out of time; says what, after how long, what to do
    └── StoreError                   operational errors of the durable store
        ├── StoreCorrupt             a record failed to decode; names the database and key
        ├── SchemaTooNew             the store was written by a newer herder
        ├── StoreLocked              another process holds the store for writing
        ├── LeaseLost                another runtime took the leader lease; this one may not write
        ├── StoreClosed              the store or its writer was closed
        ├── ConditionFailed          a transition's compare-and-set condition did not hold
        └── StoreIOError             the disk refused a commit (e.g. it is full)

Errors of lower libraries (``lmdb.Error``, msgpack's exceptions) are translated at the
store boundary with ``raise ... from exc`` so callers only ever see this tree.
"""

from __future__ import annotations


class HerderError(Exception):
    """Root of every error herder raises on purpose."""


class InvalidInput(HerderError, ValueError):
    """Input refused before anything was written: a bad name, id, graph or value."""


class MissingExtra(HerderError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TimedOut(HerderError, TimeoutError):
    """A wait ran out of time: room under ``max_active_workflows``, a workflow's result,
    a commit, an answer from the runtime's actors, a stop. The message says what timed
    out, after how long, and what to do. Also a :class:`TimeoutError`, so code that
    catches that goes on working."""


class EncodeError(InvalidInput):
    """A value could not be encoded as msgpack, or it exceeds a configured size limit."""


class StoreError(HerderError):
    """An operational problem with the durable store."""


class StoreCorrupt(StoreError):
    """A stored record could not be decoded.

    ``db`` and ``key`` name the record so an operator can inspect or remove it; other
    records stay readable.
    """

    def __init__(self, db: str, key: bytes, reason: str) -> None:
        self.db = db
        self.key = key
        self.reason = reason
        advice = (
            "the store's own metadata is damaged and no herder command can open the store: "
            "restore the store from a backup"
            if db == "meta"
            else "inspect it with `herder check --store PATH` or restore the store from a backup"
        )
        super().__init__(f"corrupt record in database {db!r} at key {key!r}: {reason}; {advice}")


class SchemaTooNew(StoreError):
    """The store was written by a newer schema version than this herder understands."""


class StoreLocked(StoreError):
    """Another process already holds this store directory for writing."""


class LeaseLost(StoreError):
    """Another runtime holds the store's leader lease now; this one may no longer write.

    Every write batch checks the lease inside its own transaction, so a runtime that was
    paused (SIGSTOP) or slow past its lease fails its next commit with this error instead
    of writing over the new leader. Such a runtime stops dispatching; restart it as a
    standby (``Runtime(path, standby=True)``) to have it wait for the lease again.
    """


class StoreClosed(StoreError):
    """The store or its writer has been closed; open a new one to continue."""


class ConditionFailed(StoreError):
    """A transition's compare-and-set condition did not hold; nothing of it was written."""


class StoreIOError(StoreError):
    """The operating system refused a commit (disk full, I/O error).

    Data committed earlier is intact; the store is usable again once the cause is fixed.
    """
