"""herder.runtime — the public API. Users import from here only."""

from herder.store import HerderError

__all__ = ["HerderError"]
