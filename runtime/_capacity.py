"""How many workflows are unfinished, and waiting for room under
``max_active_workflows`` (a base class of :class:`Runtime`).

``start()`` takes a slot before it writes and the final listener gives it back; the
Scheduler's first recovery counts the unfinished workflows it found (``_on_recovered``)
and an operator action that resumes a parked workflow counts it again (``_on_resumed``).
"""

from __future__ import annotations

import asyncio

from herder.runtime._part import whole as _runtime


class Capacity:
    """Slots under ``max_active_workflows``."""

    def _take_capacity_now(self, n: int) -> int:
        """Take ``n`` slots at once if they are free (start_many's fast path); else none."""
        rt = _runtime(self)
        with rt._lock:
            rt._check_open()
            if rt._active + n > rt._max_active:
                return 0
            rt._active += n
            return n

    def _wait_capacity(self, timeout: float | None) -> None:
        rt = _runtime(self)
        with rt._lock:
            if not rt._lock.wait_for(lambda: rt._active < rt._max_active or rt._closed, timeout):
                raise TimeoutError(
                    f"{rt._active} workflows are unfinished (max_active_workflows="
                    f"{rt._max_active}); start() waited {timeout}s for one to finish"
                )
            rt._check_open()
            rt._active += 1

    async def _capacity_async(self, timeout: float | None) -> None:
        """As :meth:`_wait_capacity`, awaited: woken by :attr:`_capacity_freed`."""
        rt = _runtime(self)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with rt._lock:
                if rt._active < rt._max_active or rt._closed:
                    rt._check_open()
                    rt._active += 1
                    return
                freed = rt._capacity_freed.arm()
            left = None if deadline is None else deadline - loop.time()
            try:
                await asyncio.wait_for(freed, left)
            except TimeoutError:
                raise TimeoutError(
                    f"{rt._active} workflows are unfinished (max_active_workflows="
                    f"{rt._max_active}); start_async() waited {timeout}s for one to finish"
                ) from None

    def _release_capacity(self) -> None:
        rt = _runtime(self)
        with rt._lock:
            rt._active -= 1
            rt._lock.notify()
        rt._capacity_freed.fire()

    def _on_recovered(self, unfinished: int) -> None:
        rt = _runtime(self)
        with rt._lock:
            rt._active += unfinished

    def _on_resumed(self) -> None:
        rt = _runtime(self)
        with rt._lock:
            rt._active += 1
