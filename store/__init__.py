"""herder.store — the durable layer. Imports nothing else from herder."""

from herder.store._errors import (
    ConditionFailed,
    EncodeError,
    HerderError,
    InvalidInput,
    SchemaTooNew,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreIOError,
    StoreLocked,
)

__all__ = [
    "ConditionFailed",
    "EncodeError",
    "HerderError",
    "InvalidInput",
    "SchemaTooNew",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreIOError",
    "StoreLocked",
]
