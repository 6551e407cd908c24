"""Agents on a Ray cluster (the ``ray`` extra): the placement a user names, and its backend.

``RayHost`` is plain data (where and how the agent's worker processes run) and imports
nothing of Ray, so ``herder.runtime`` can export it; Ray itself is imported only when an
agent is placed on it (``Runtime.add_agent(..., host=RayHost(...))``):

- ``_connection``: ``ray.init`` on the caller's thread, shared by every runtime of the
  process, shut down with the last one that started it; the check that an agent's code
  imports on the cluster.
- ``_worker``: the Ray actor (one worker process) that hosts up to ``slots`` instances of
  one agent and runs their attempts with the shared ``run_attempt``.
- ``_host``: the daemon side: one local proxy actor per instance under the agent's own
  supervisor (so crashes, restarts, backoff and intensity are the thread host's), the
  worker processes of a runtime (killed when an attempt hangs, and at ``stop()``).

It may import ``herder.actors`` and ``herder.store``; nothing below it imports it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herder.store import InvalidInput, MissingExtra

INSTALL = "pip install 'herder[ray]'"
MAX_DEFAULT_SLOTS = 16
"""``slots`` when not given: min(concurrency, this)."""


def ray_installed() -> bool:
    """Whether the ``ray`` package can be imported (without importing it)."""
    return importlib.util.find_spec("ray") is not None


@dataclass(frozen=True)
class RayHost:
    """Run an agent's actions on a Ray cluster: ``rt.add_agent(..., host=RayHost(...))``.

    ``address`` is where the cluster is: ``None`` starts a local one for this process
    (development and tests; it stops with the last runtime that uses it), ``"auto"`` or
    ``"ray://host:10001"`` joins an existing one. A program that already called
    ``ray.init`` keeps its connection. Every RayHost of a process must name the same
    address (Ray allows one connection per process). ``namespace`` and ``runtime_env``
    (e.g. ``{"py_modules": [mypackage]}``: how the agent's code reaches the workers) are
    Ray's own.

    Placement: each Ray worker process hosts ``slots`` instances of the agent (one thread
    each; default ``min(concurrency, 16)``) and reserves ``num_cpus``, ``num_gpus`` and
    ``resources`` on the cluster. A hung or killed worker takes its neighbours' attempts
    with it (retried as crashes): use ``slots=1`` for hang-prone or one-GPU agents.
    """

    address: str | None = None
    slots: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)
    runtime_env: Mapping[str, Any] | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        if not ray_installed():
            raise MissingExtra(f"RayHost needs Ray, which is not installed: {INSTALL}")
        for name in ("address", "namespace"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"RayHost: {name} must be a str or None, got {value!r}")
        if self.slots is not None and (type(self.slots) is not int or self.slots < 1):
            raise InvalidInput(f"RayHost: slots must be an int >= 1 or None, got {self.slots!r}")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"RayHost: {name} must be a number >= 0, got {value!r}")
        if not isinstance(self.resources, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int | float) and v >= 0
            for k, v in self.resources.items()
        ):
            raise InvalidInput(
                f"RayHost: resources must map names to numbers >= 0, got {self.resources!r}"
            )
        if self.runtime_env is not None and not isinstance(self.runtime_env, Mapping):
            raise InvalidInput(
                f"RayHost: runtime_env must be a dict or None, got {self.runtime_env!r}"
            )

    def slots_for(self, concurrency: int) -> int:
        """Instances per worker process for an agent of ``concurrency`` instances."""
        return self.slots if self.slots is not None else min(concurrency, MAX_DEFAULT_SLOTS)


def attach(
    owner: object, host: RayHost, agent: str, factory: Callable[[], Any], directory: Path
) -> None:
    """Connect ``owner`` (a runtime's engine context, whose store is in ``directory``) to
    ``host``'s cluster on the calling thread, and check that Ray takes ``host``'s
    placement (and, on a local cluster herder started, has room for it) and that
    ``factory`` imports there (:class:`InvalidInput` if not; then an
    owner that had no Ray agent yet lets go of the connection, as ``detach`` would, since
    its ``stop()`` will not)."""
    from herder.actors.ray._connection import (
        check_code,
        check_fits,
        connect,
        disconnect,
        record_cluster,
    )
    from herder.actors.ray._workers import check_placement

    first = connect(owner, host, directory)
    try:
        check_placement(host, agent)
        check_fits(host, agent)
        check_code(host, agent, factory)
    except BaseException:
        if first:  # its first Ray agent was refused: it does not use the connection
            disconnect(owner)
        raise
    record_cluster()  # its helper processes all run once a worker has


def detach(owner: object) -> None:
    """``owner`` is done with Ray: kill its workers; shut Ray down if it was the last
    runtime using a cluster herder started."""
    from herder.actors.ray._connection import disconnect

    disconnect(owner)


__all__ = ["INSTALL", "RayHost", "attach", "detach", "ray_installed"]
