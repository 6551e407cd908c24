"""A host forgets the record of a name it serves no more once nothing of it is left."""

from __future__ import annotations

from herder.actors._hosted import Hosted, HostedAgents, Instance
from herder.runtime import Agent, StepContext


class Dev(Agent):
    def __init__(self, i: int) -> None:
        self.i = i

    def go(self, ctx: StepContext) -> int:
        return self.i


def test_a_host_forgets_a_name_only_once_it_serves_no_more_and_nothing_of_it_is_left() -> None:
    host: HostedAgents[Hosted[Instance]] = HostedAgents(Hosted)
    host.add("a", Dev, 1)
    assert not host.forget("a")  # served
    record = host._agents["a"]
    record.concurrency = 0  # removed
    record.queue.push("job", 0, 0.0)
    assert not host.forget("a")  # a job waits for it
    record.queue.pop()
    record.instances["a#0"] = Instance(busy_token=7)
    assert not host.forget("a")  # an attempt runs
    first = record.new_instance_id()
    record.instances.clear()
    assert host.forget("a")
    assert host.queue("a") is None
    host.add("a", Dev, 1)  # late news of its last life's instances names none of the new
    assert (first, host._agents["a"].new_instance_id()) == ("a#0", "a#1")
