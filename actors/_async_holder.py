"""An asyncio agent's object, built on the loop by the first attempt that needs it, kept
between attempts (actors/_async_host.py).

Imports: the hosts' ``let_go`` and herder.store's containment.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from herder.actors._hosted import let_go
from herder.store import UserCodeFailed, describe, error_types


class Holder:
    """An agent's object, built on the loop by the first attempt that needs it."""

    __slots__ = ("agent", "building", "factory")

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.agent: Any = None
        self.building: asyncio.Future[Any] | None = None  # attempts arriving meanwhile wait

    def __del__(self) -> None:
        box, self.agent = [self.agent], None  # (a holder is replaced on the Scheduler's
        let_go(box)  # thread: its object, and the user's __del__, go elsewhere)

    async def get(self) -> Any:
        """The object (building it once; raises :class:`UserCodeFailed` if it cannot be).

        Attempts arriving while it is built wait for it; if the attempt building it is
        cancelled (timed out, replaced), the next one builds it instead of failing."""
        while self.agent is None:
            building = self.building
            if building is None:
                return await self._build()
            try:
                return await asyncio.shield(building)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not building.cancelled() or (task is not None and task.cancelling()):
                    raise  # this attempt itself was cancelled
        return self.agent

    async def _build(self) -> Any:
        building = self.building = asyncio.get_running_loop().create_future()
        task = asyncio.current_task()
        try:
            built = self.factory()
            if inspect.iscoroutine(built):
                built = await built
        except BaseException as exc:  # user code may raise anything at all
            self.building = None
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                building.cancel()  # the waiting attempts build it themselves
                raise
            failed = UserCodeFailed(describe(exc), error_types(exc))
            building.set_exception(failed)
            building.exception()  # retrieved: the waiting attempts re-raise it
            raise failed from None
        self.agent, self.building = built, None
        building.set_result(built)
        return built
