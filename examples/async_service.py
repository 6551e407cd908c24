"""An asyncio web service whose handlers start workflows and await them.

    python examples/async_service.py STORE_DIR

Everything runs on one event loop: a remote inventory service (a stand-in, on a local
port), this service's HTTP front (``GET /order/<sku>``), and herder's ``async def``
actions, which call the inventory through **one shared async HTTP client per agent**
(``Inventory.http``: its keep-alive connections serve every attempt). Each request's
handler does two awaits: ``rt.start_async(...)`` (durable when it returns) and
``handle.result_async()``; the loop serves other requests meanwhile. A sold-out SKU
fails the ``reserve`` step for good, so the workflow releases the payment hold (an async
compensation) and the handler answers 409.

The HTTP client is twenty lines of ``asyncio`` streams to keep the example free of
dependencies; with httpx the agent holds an ``httpx.AsyncClient`` the same way.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from typing import Any

from herder.runtime import (
    Agent,
    Permanent,
    Runtime,
    StepContext,
    TimedOut,
    Workflow,
    WorkflowFailed,
)


class HttpClient:
    """A tiny keep-alive JSON client for one ``host:port`` (HTTP/1.1, Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.connections = 0  # opened so far: far fewer than requests, they are reused

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.connections += 1
        data = json.dumps(body).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(data)}\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        status, payload = await read_message(reader)
        self.idle.append((reader, writer))
        return int(status.split()[1]), json.loads(payload)


async def read_message(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One HTTP message: its first line and its body (sized by Content-Length)."""
    first = (await reader.readline()).decode().strip()
    length = 0
    while line := (await reader.readline()).strip():
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return first, await reader.readexactly(length)


def respond(writer: asyncio.StreamWriter, status: str, body: Any) -> None:
    data = json.dumps(body).encode()
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)


# -- the remote side: an idempotent inventory service ------------------------------------


class InventoryService:
    """Holds stock per SKU; a request repeated with the same key is answered, not redone."""

    def __init__(self, sold_out: set[str]) -> None:
        self.sold_out = sold_out
        self.done: dict[str, Any] = {}  # idempotency key -> answer
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                first, payload = await read_message(reader)
            except (asyncio.IncompleteReadError, asyncio.CancelledError):
                break  # the client went, or the example is over (its keep-alive stays open)
            if not first:
                break
            self.requests += 1
            body = json.loads(payload)
            await asyncio.sleep(0.01)  # the remote side's latency
            if first.startswith("POST /reserve") and body["sku"] in self.sold_out:
                respond(writer, "409 Conflict", {"error": f"{body['sku']} is sold out"})
            else:
                answer = self.done.setdefault(body["key"], {"sku": body["sku"], "held": True})
                respond(writer, "200 OK", answer)
            await writer.drain()
        writer.close()


# -- herder: async agents over the remote services ---------------------------------------


class Inventory(Agent):
    """One object serves every attempt on the loop, so one client (and its connections)."""

    def __init__(self, port: int) -> None:
        self.http = HttpClient("127.0.0.1", port)

    async def reserve(self, ctx: StepContext) -> Any:
        body = {"sku": ctx.input["sku"], "key": ctx.idempotency_key}
        status, answer = await self.http.post("/reserve", body)
        if status == 409:
            raise Permanent(answer["error"])  # no retry will help: compensate
        return answer

    async def hold_payment(self, ctx: StepContext) -> Any:
        _, answer = await self.http.post("/hold", {"sku": "$", "key": ctx.idempotency_key})
        return answer

    async def release_payment(self, ctx: StepContext) -> None:
        key = ctx.idempotency_key.removesuffix("/compensate")
        await self.http.post("/release", {"sku": "$", "key": key + "/release"})


order = (
    Workflow("order")
    .step("pay", agent="inventory", action="hold_payment", compensate="release_payment")
    .step("reserve", agent="inventory", action="reserve", after=["pay"])
)


# -- this service's HTTP front -----------------------------------------------------------


async def handle(rt: Runtime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    first, _ = await read_message(reader)  # e.g. "GET /order/sku-1 HTTP/1.1"
    sku = first.split()[1].rsplit("/", 1)[-1]
    h = await rt.start_async("order", {"sku": sku})  # durable when it returns
    try:
        respond(writer, "200 OK", await h.result_async(timeout=30))
    except WorkflowFailed as failed:
        respond(writer, "409 Conflict", {"error": failed.status.error})
    except TimedOut:  # still running, durably: the client may ask again by its id
        respond(writer, "202 Accepted", {"workflow_id": h.id})
    await writer.drain()
    writer.close()


async def get(port: int, path: str) -> tuple[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: here\r\n\r\n".encode())
    status, body = await read_message(reader)
    writer.close()
    return status.split(" ", 1)[1], json.loads(body)


async def main(store: str, requests: int = 20) -> dict[str, Any]:
    inventory = InventoryService(sold_out={"sku-3"})
    remote = await asyncio.start_server(inventory.serve, "127.0.0.1", 0)
    remote_port = remote.sockets[0].getsockname()[1]
    # loop=: the async actions run as tasks on this very loop, beside the handlers.
    async with Runtime(store, loop=asyncio.get_running_loop()) as rt:
        rt.add_agent("inventory", functools.partial(Inventory, remote_port), concurrency=100)
        rt.add_workflow(order)
        front = await asyncio.start_server(lambda r, w: handle(rt, r, w), "127.0.0.1", 0)
        port = front.sockets[0].getsockname()[1]
        async with remote, front:
            # A service would `await rt.run_forever_async()` here; the example asks itself.
            answers = await asyncio.gather(*(get(port, f"/order/sku-{i}") for i in range(requests)))
    return {"answers": answers, "remote_requests": inventory.requests}


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # herder logs the sold-out attempt as a warning
    outcome = asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "var/herder-async"))
    for status, body in outcome["answers"][:4]:
        print(status, body)
