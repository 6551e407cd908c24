"""An app for ``herder run``: the factory registers agents and workflows on the runtime.

    herder run --store /var/lib/herder --app ha_app:build            # the active daemon
    herder run --store /var/lib/herder --app ha_app:build --standby  # a hot standby

``herder run`` imports ``ha_app`` (from the working directory or ``PYTHONPATH``), opens
the runtime and calls ``build(rt)``; then it serves until SIGTERM, a handoff
(``herder handoff --store /var/lib/herder``) or the loss of its lease. Both daemons call
the same factory: a standby registers everything up front and starts working the moment
it takes the lease. See ``herder.service`` next to this file for systemd.
"""

from __future__ import annotations

from herder.runtime import Agent, RetryPolicy, Runtime, StepContext, Workflow


class Mailer(Agent):
    """Sends mail through a provider that deduplicates on the idempotency key."""

    def send(self, ctx: StepContext) -> dict[str, str]:
        # A real agent passes ctx.idempotency_key to the provider, so a step run again
        # after a takeover is recognised as the same request.
        return {"message_id": ctx.idempotency_key, "to": ctx.input["to"]}


WELCOME = (
    Workflow("welcome", version=1)
    .step("mail", agent="mailer", action="send", timeout=30.0,
          retry=RetryPolicy(max_attempts=10, initial_interval=1.0))
)  # fmt: skip


def build(rt: Runtime) -> None:
    """Register everything this daemon serves (called once, on active and standby alike)."""
    rt.add_agent("mailer", Mailer, concurrency=4)
    rt.add_workflow(WELCOME)
