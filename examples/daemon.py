"""A minimal herder daemon: one agent per remote host, hosts added and removed at run time.

    python examples/daemon.py STORE_DIR HOSTS_FILE

``HOSTS_FILE`` lists one host per line. Each host gets its own agent (``host:NAME``),
built by ``functools.partial(HostAgent, host=NAME)``; send SIGHUP after editing the file
and the daemon registers new hosts and unregisters removed ones (their queued steps wait
until the host is added again). The deploy workflow is named after its set of hosts
(``deploy-`` and a hash of the sorted names, logged at start and after each reload), so
a new set is a new definition: a stored definition is never changed under the workflows
that started with it. At start and after each reload it deploys ``RELEASE`` to the hosts
it serves, once per set of hosts (a restart, or a SIGHUP that changed no host, starts no
second deploy). SIGTERM or Ctrl-C drains running attempts and stops.
Inspect it meanwhile with ``herder ls --store STORE_DIR``: it lists the deploys.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pathlib
import signal
import sys
import threading

from herder.runtime import Agent, HerderError, Runtime, StepContext, Workflow

RELEASE = "1.0"
"""What each deploy rolls out (a real daemon would take it from its release pipeline)."""


class HostAgent(Agent):
    """Runs commands on one remote host (here: pretends to)."""

    def __init__(self, host: str) -> None:
        self.host = host

    def deploy(self, ctx: StepContext) -> dict[str, str]:
        # A real agent would call the host with ctx.idempotency_key so that a retried
        # deploy is recognised as the same request.
        return {"host": self.host, "version": ctx.input["version"]}

    def rollback(self, ctx: StepContext) -> None:
        pass


def deploy_workflow(hosts: list[str]) -> Workflow:
    """Deploy to each host in turn; a failure rolls back the hosts already done. Named
    after the hosts: one definition per set of hosts."""
    digest = hashlib.sha256("\n".join(hosts).encode()).hexdigest()[:12]
    wf = Workflow(f"deploy-{digest}", version=1)
    previous: list[str] = []
    for host in hosts:
        wf = wf.step(host, agent=f"host:{host}", action="deploy", compensate="rollback",
                     after=previous)  # fmt: skip
        previous = [host]
    return wf


def reconcile(rt: Runtime, served: set[str], hosts: set[str]) -> None:
    """Make the registered host agents match ``hosts`` (``served`` is updated in place)."""
    for host in sorted(hosts - served):
        rt.add_agent(f"host:{host}", functools.partial(HostAgent, host=host))
        served.add(host)  # (one by one: a host refused midway leaves it true)
    for host in sorted(served - hosts):
        rt.remove_agent(f"host:{host}")
        served.discard(host)


def read_hosts(path: pathlib.Path) -> set[str]:
    """The hosts listed in ``path``; ValueError if it lists none."""
    hosts = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    if not hosts:
        raise ValueError(f"{path} lists no host")
    return hosts


def serve(rt: Runtime, served: set[str], path: pathlib.Path) -> None:
    """Register the hosts ``path`` lists and their deploy workflow."""
    hosts = read_hosts(path)  # (read before anything changes)
    reconcile(rt, served, hosts)
    workflow = deploy_workflow(sorted(served))
    rt.add_workflow(workflow)
    logging.info("serving %d hosts; deploys go to workflow %s", len(served), workflow.name)


def deploy(rt: Runtime, served: set[str]) -> str:
    """Start the deploy of :data:`RELEASE` to the hosts served; its id. The id names the
    set of hosts and the release, and a start is idempotent per id: the same set again
    starts no second deploy."""
    name = deploy_workflow(sorted(served)).name
    handle = rt.start(name, {"version": RELEASE}, workflow_id=f"{name}-{RELEASE}")
    logging.info("release %s goes to %d hosts in workflow %s", RELEASE, len(served), handle.id)
    return handle.id


def reload(rt: Runtime, served: set[str], path: pathlib.Path) -> bool:
    """:func:`serve` and :func:`deploy` on SIGHUP. A file that cannot be read or lists no
    host changes nothing; a host herder refuses (or anything else herder raises, such as
    RuntimeClosed for a SIGHUP that comes while the daemon stops) stops the reload there.
    Either way it is logged, the daemon goes on serving, and the next SIGHUP tries again
    (a reload that raised ended the reloader: no later SIGHUP did anything)."""
    try:
        serve(rt, served, path)
        deploy(rt, served)
    except (OSError, ValueError, HerderError) as exc:
        logging.error("reload refused, still serving %d hosts: %s", len(served), exc)
        return False
    return True


def main(store: str, hosts_file: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = pathlib.Path(hosts_file)
    served: set[str] = set()

    def register(rt: Runtime) -> None:  # before recovery, so recovered deploys resume
        serve(rt, served, path)

    with Runtime(store, setup=register) as rt:
        deploy(rt, served)
        wanted = threading.Event()
        signal.signal(signal.SIGHUP, lambda signum, frame: wanted.set())

        def reloader() -> None:  # a signal handler should only set an event
            while True:
                wanted.wait()
                wanted.clear()
                reload(rt, served, path)

        threading.Thread(target=reloader, daemon=True).start()
        rt.run_forever(drain_timeout=30.0)  # returns after SIGTERM/SIGINT and a drain


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/daemon.py STORE_DIR HOSTS_FILE (one host per line)")
    try:
        main(sys.argv[1], sys.argv[2])
    except (OSError, ValueError, HerderError) as exc:  # no hosts, a store held by another
        sys.exit(f"daemon.py: cannot start: {exc}")
