"""The process's one Ray connection, shared by its runtimes, and the code-import check.

Ray allows one connection (``ray.init``) per process. The first runtime that places an
agent on Ray connects, on its caller's thread (``add_agent``; ``ray.init`` takes seconds
and must never block the Scheduler's thread). A connection herder made is shut down when
the last runtime using it stops; one the program made itself (it called ``ray.init``
first) is left alone.
"""

from __future__ import annotations

import pathlib
import socket
import threading
from collections.abc import Callable
from typing import Any

import ray

from herder.actors.ray import RayHost
from herder.actors.ray._leftovers import forget, kill_leftovers, remember
from herder.store import InvalidInput, bounded_text, describe, get_logger

_log = get_logger("herder.ray")

CHECK_TIMEOUT = 120.0
"""Seconds the code-import check may take (a runtime_env may install packages first)."""
REACH_WAIT = 10.0
"""Seconds a ``host:port`` address may take to accept a connection before ``ray.init``."""

_lock = threading.Lock()
_owners: dict[int, object] = {}  # id(owner) -> owner: runtimes using the connection
_address: list[str | None] = []  # the address herder connected to, if it did
_started: list[pathlib.Path] = []  # where the local cluster herder started is recorded


def record_cluster() -> None:
    """Record the processes of the local cluster herder started (once they all run)."""
    with _lock:
        for directory in _started:
            remember(directory, str(pathlib.Path(ray.__file__).parent))


def connect(owner: object, host: RayHost, directory: pathlib.Path) -> bool:
    """Connect this process to ``host.address`` unless it is connected; ``owner`` uses it
    (True: it did not before).

    A local cluster herder starts is recorded in ``directory`` (the store's), whose
    previous daemon's leftovers are killed first (``_leftovers``)."""
    with _lock:
        if _address and _address[0] != host.address:
            raise InvalidInput(
                f"RayHost(address={host.address!r}): this process is connected to "
                f"{_address[0]!r}; Ray allows one cluster per process, so every RayHost "
                "of a process must name the same address"
            )
        if not ray.is_initialized():
            options: dict[str, Any] = {"namespace": host.namespace, "logging_level": "WARNING"}
            if host.address is None:  # a local cluster for this process (development)
                options["include_dashboard"] = False
                killed = kill_leftovers(directory)
                if killed:
                    _log.warning("killed %d Ray processes left by a daemon that died", killed)
            try:  # ("local": Ray's None joins a cluster RAY_ADDRESS or `ray start` made)
                if host.address is not None:
                    _reachable(host.address)
                ray.init(address="local" if host.address is None else host.address, **options)
            except Exception as exc:  # no cluster there, Ray Client missing, a bad option
                todo = (
                    "see Ray's reason (a full disk, no free port?)"
                    if host.address is None
                    else "a ray:// address needs Ray Client (`pip install 'ray[client]'`) "
                    "and the cluster's client server (port 10001 of its head)"
                    if host.address.startswith("ray://")
                    else "start the cluster first (`ray start --head`) and name its address, "
                    "or use address=None for a local cluster"
                )
                raise InvalidInput(
                    f"RayHost(address={host.address!r}): could not "
                    f"{'connect to' if host.address is not None else 'start'} Ray "
                    f"({describe(exc)}); {todo}"
                ) from exc
            _address[:] = [host.address]
            if host.address is None:
                _started[:] = [directory]
        first = id(owner) not in _owners
        _owners[id(owner)] = owner
        return first


def check_fits(host: RayHost, agent: str) -> None:
    """Refuse (:class:`InvalidInput`) a placement the local cluster herder started
    (``address=None``) cannot hold: it has this machine's resources and no autoscaler, so
    a worker process asking for more would never start (each instance of the agent
    waited a minute for one, then failed its start, step after step)."""
    with _lock:
        if not _started:
            return  # another cluster may grow (an autoscaler), or free resources later
    have = ray.cluster_resources()
    if not have:  # no node's resources known yet: Ray will say, as elsewhere
        return
    asked = {"CPU": host.num_cpus, "GPU": host.num_gpus, **host.resources}
    short = {name: amount for name, amount in asked.items() if amount > have.get(name, 0)}
    if short:
        raise InvalidInput(
            f"agent {agent!r}: the local Ray cluster herder started (address=None) has "
            f"{_amounts({name: have.get(name, 0) for name in short})}, less than the "
            f"{_amounts(short)} each worker process of the agent asks for: lower "
            "num_cpus, num_gpus or resources, or join a cluster that has them (address=...)"
        )


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in resources.items())


def _reachable(address: str) -> None:
    """Raise ConnectionError when nothing answers at a ``host:port`` address: there,
    ``ray.init`` retries for many minutes before it gives up ("auto" and ``ray://`` are
    Ray's to find, and fail at once)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_WAIT).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address}: {describe(exc)}") from None


def disconnect(owner: object) -> None:
    """``owner`` stopped: kill its workers, then shut Ray down if herder connected and
    no runtime uses it any more."""
    backend = getattr(owner, "remote", None)
    if backend is not None:
        backend.close()
    with _lock:
        if _owners.pop(id(owner), None) is None:
            return
        if _owners or not _address:
            return
        _address.clear()
        if ray.is_initialized():
            ray.shutdown()
        for directory in _started:
            forget(directory)
        _started.clear()


@ray.remote(max_retries=0)
def _loads(factory: Callable[[], Any]) -> None:
    """Runs on the cluster: unpickling ``factory`` imports the agent's code (nothing of
    the user's is called: a repr of what the factory holds may raise)."""


def check_code(host: RayHost, agent: str, factory: Callable[[], Any]) -> None:
    """Fail loudly (:class:`InvalidInput`) when ``factory`` cannot be sent to the cluster
    or does not import there, rather than at each step; the factory is not called."""
    options: dict[str, Any] = {"num_cpus": 0}
    if host.runtime_env is not None:
        options["runtime_env"] = dict(host.runtime_env)
    try:  # pickled as for an argument, apart from the call (whose runtime_env may fail)
        sent = ray.put(factory)
    except Exception as exc:  # a lock (Ray's TypeError buries the cause in a page of
        cause = exc.__cause__ if exc.__cause__ is not None else exc  # checks), or whatever
        raise InvalidInput(  # a __reduce__ raised
            f"agent {agent!r}: its factory cannot be sent to the Ray cluster "
            f"({describe(cause)}): give it plain arguments, and have the agent open its "
            "own connections and locks"
        ) from None
    try:
        loaded = _loads.options(**options).remote(sent)
    except Exception as exc:  # its runtime_env, say
        raise _not_loaded(agent, exc) from None
    try:
        ray.get(loaded, timeout=CHECK_TIMEOUT)
    except Exception as exc:  # Ray wraps the worker's import error in its own types
        raise _not_loaded(agent, exc) from None


def _not_loaded(agent: str, exc: Exception) -> InvalidInput:
    reason = bounded_text(str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
    return InvalidInput(
        f"agent {agent!r}: its code does not load on the Ray cluster "
        f"({type(exc).__name__}: {reason}); ship it with RayHost(runtime_env="
        "{'py_modules': [your_package]}) or install it in the cluster's image"
    )
