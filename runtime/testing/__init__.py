"""herder.runtime.testing — the testing kit: what herder's own tests use, shipped so users
can test their workflows.

- :class:`FakeClock` — time that moves only when told; pass it as ``Runtime(clock=...)``
  and call :func:`advance` to fire timeouts, retries and sweeps instantly;
  ``step_wall(seconds)`` steps the wall clock alone (an NTP correction, a VM resume).
- :class:`EffectLedger` — an idempotent fake remote service that counts every request and
  every effect by idempotency key, so a test can assert "applied once".
- :func:`wait_until` — block until a condition on the runtime holds, woken by each commit;
  :func:`settle` and :func:`advance` let a runtime on a :class:`FakeClock` catch up.
- :func:`check_store` — ``herder check`` as a function: every broken cross-database
  invariant of a store, by key (run it after a test, as bbolt's test helpers do), on
  :func:`store_of` a runtime, or on a store's path.
- Fault helpers for agent actions: :func:`fail_first`, :func:`hang_until`,
  :func:`crash_instance`, :func:`fail_permanently`; and for the engine itself,
  :func:`crash_scheduler` (the Scheduler fails as a bug would and is restarted).
- Simulation under a :class:`FaultSchedule` (one seed decides every fault), reported as a
  :class:`SimReport` listing every broken expectation: :func:`simulate_exact` runs the
  real engine on one thread (one seed, one history: ``SimReport.trace``), :func:`simulate`
  a real, threaded runtime (reproducible faults, interleaving very likely);
  ``docs/testing.md`` shows both.

Modules: ``_kit`` (the helpers) with ``_threads`` (whether the runtime's threads all
wait, for ``settle``), ``_faults`` (the schedule and the workload), ``_world``
(what both simulations share: the simulated service, the report, the expectations),
``_model_sim`` (the exact simulation) with ``_inline_host``, ``_exact_operator`` and
``_exact_checks``, ``_sim`` (the threaded one) with ``_sim_operator`` (its operator and
wall-clock steps).
"""

from herder.actors import FakeClock, InstanceCrash
from herder.runtime._check import check_store
from herder.runtime._seams import crash_scheduler
from herder.runtime.testing._faults import FaultSchedule
from herder.runtime.testing._kit import (
    EffectLedger,
    advance,
    crash_instance,
    fail_first,
    fail_permanently,
    hang_until,
    settle,
    store_of,
    wait_until,
)
from herder.runtime.testing._model_sim import simulate_exact
from herder.runtime.testing._sim import simulate
from herder.runtime.testing._world import SimReport

__all__ = [
    "EffectLedger",
    "FakeClock",
    "FaultSchedule",
    "InstanceCrash",
    "SimReport",
    "advance",
    "check_store",
    "crash_instance",
    "crash_scheduler",
    "fail_first",
    "fail_permanently",
    "hang_until",
    "settle",
    "simulate",
    "simulate_exact",
    "store_of",
    "wait_until",
]
