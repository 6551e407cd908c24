"""examples/async_service.py: an asyncio web service whose handlers start workflows and
await them, its ``async def`` actions sharing one HTTP client per agent."""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "async_service.py"


def test_the_async_service_answers_every_request_from_its_workflow(tmp_path: Path) -> None:
    example = runpy.run_path(str(EXAMPLE), run_name="example")
    outcome = asyncio.run(example["main"](str(tmp_path / "store"), 20))
    answers = outcome["answers"]
    assert len(answers) == 20
    for i, (status, body) in enumerate(answers):
        if i == 3:  # sold out: the reservation fails for good, the payment is released
            assert status == "409 Conflict"
            assert "sku-3 is sold out" in body["error"]
        else:
            assert status == "200 OK"
            assert body["reserve"] == {"sku": f"sku-{i}", "held": True}
    # two requests per order (hold, reserve) plus one release: none repeated
    assert outcome["remote_requests"] == 2 * 20 + 1


def test_one_client_per_agent_reuses_its_connections(tmp_path: Path) -> None:
    example = runpy.run_path(str(EXAMPLE), run_name="example")
    clients = []
    inventory = example["Inventory"]
    original = inventory.__init__

    def tracking(self: object, port: int) -> None:
        original(self, port)
        clients.append(self.http)  # type: ignore[attr-defined]

    inventory.__init__ = tracking
    outcome = asyncio.run(example["main"](str(tmp_path / "store"), 20))
    assert len(outcome["answers"]) == 20
    assert len(clients) == 1  # one agent object, so one client, for 41 requests
    assert clients[0].connections < outcome["remote_requests"]
