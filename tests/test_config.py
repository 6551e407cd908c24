"""RuntimeConfig: the Runtime's settings as one frozen, checked value."""

from __future__ import annotations

import dataclasses
import datetime
import sys
from pathlib import Path

import pytest

from herder.runtime import HerderError, InvalidInput, RetryPolicy, Runtime, RuntimeConfig
from herder.runtime.testing import FakeClock


def test_keywords_override_the_config_and_the_runtime_runs_on_the_result(tmp_path: Path) -> None:
    config = RuntimeConfig(sweep_interval=0.5, seed=7, retention=None)
    with Runtime(tmp_path / "s", config, clock=FakeClock(), seed=9) as rt:
        assert rt.config.sweep_interval == 0.5
        assert rt.config.seed == 9  # the keyword wins
        assert rt.config.retention is None
    assert config.seed == 7  # the caller's config is not changed


def test_a_config_is_frozen_and_replace_gives_a_checked_copy() -> None:
    config = RuntimeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]
    assert config.replace(seed=3).seed == 3
    with pytest.raises(InvalidInput, match="sweep_interval must be"):
        config.replace(sweep_interval=0)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sweep_interval", 0, "a number of seconds > 0 and at most ten years"),
        ("sweep_interval", float("inf"), "a number of seconds > 0 and at most ten years"),
        ("priority_aging", -1.0, "a number of seconds > 0 and at most ten years"),
        ("default_timeout", "10", "a number of seconds > 0 and at most ten years"),
        # Accepted before, then an OverflowError crashed the Scheduler at the first
        # dispatch or answer, until the runtime gave up (the protection review).
        ("default_timeout", 10**400, "at most ten years"),
        ("priority_aging", 10**400, "at most ten years"),
        ("ask_timeout", 1e10, "at most ten years"),  # past threading.TIMEOUT_MAX
        ("agent_restarts", (20, 10**400), "at most ten years"),
        ("max_input_bytes", 0, "an int in 1.."),
        ("max_result_bytes", 1 << 40, "an int in 1.."),
        ("max_active_workflows", 0, "an int >= 1"),
        ("max_active_workflows", True, "an int >= 1"),
        ("max_recoveries", -1, "an int >= 0"),
        ("agent_restarts", (3,), "(max_restarts: int >= 0, period: seconds > 0"),
        ("agent_restarts", (3, 0), "(max_restarts: int >= 0, period: seconds > 0"),
        ("instance_shutdown", -0.5, "a finite number of seconds >= 0"),
        ("default_retry", "twice", "a RetryPolicy or None"),
        ("seed", 1.5, "an int or None"),
        ("standby", "yes", "True or False"),
        ("clock", "x", "None or a clock"),
        ("log_level", "BOGUS", "a level name such as 'INFO'"),
        ("log_level", -1, "an int >= 0"),
        ("tracer_provider", "x", "an OpenTelemetry TracerProvider"),
    ],
)
def test_a_bad_value_names_the_field_what_it_expects_and_what_it_got(
    tmp_path: Path, field: str, value: object, expected: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        Runtime(tmp_path / "s", **{field: value})
    message = str(raised.value)
    assert message.startswith(f"{field} must be ")
    assert expected in message
    assert repr(value) in message
    assert not (tmp_path / "s").exists(), "checked before the store is opened"


def test_retention_and_agent_host_are_checked_too() -> None:
    with pytest.raises(InvalidInput, match="retention must be"):
        RuntimeConfig(retention=-1)
    with pytest.raises(InvalidInput, match="agent_host must be one of"):
        RuntimeConfig(agent_host="fibers")
    assert RuntimeConfig(retention=datetime.timedelta(days=1)).retention_seconds == 86400.0


def test_a_runtime_that_fails_once_its_store_is_open_closes_it(tmp_path: Path) -> None:
    class Broken(FakeClock):
        def time(self) -> float:
            raise RuntimeError("the clock is broken")

    with pytest.raises(RuntimeError, match="the clock is broken"):
        Runtime(tmp_path / "s", clock=Broken())
    with Runtime(tmp_path / "s", clock=FakeClock()):  # not StoreLocked: it was closed
        pass


def test_an_unknown_setting_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown Runtime setting 'sweep_intervall'") as raised:
        Runtime(tmp_path / "s", sweep_intervall=1.0)
    assert "sweep_interval" in str(raised.value).split("the settings are:")[1]


def test_a_setup_that_is_no_function_is_refused_before_the_store_opens(tmp_path: Path) -> None:
    # It raised TypeError("'str' object is not callable") once the store was created.
    with pytest.raises(InvalidInput, match="setup must be a function taking the Runtime"):
        Runtime(tmp_path / "s", setup="app:register")  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()


def test_default_retry_none_means_the_default_policy() -> None:
    assert RuntimeConfig(default_retry=None).default_retry == RetryPolicy()  # type: ignore[arg-type]


def test_a_config_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="config must be a RuntimeConfig or None"):
        Runtime(tmp_path / "s", {"seed": 1})  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_a_free_threaded_interpreter_without_the_gil_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's lock-free hand-offs need the GIL (runtime/_config.py, check_gil):
    refused before anything is opened, saying how to run with it."""
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with pytest.raises(HerderError, match="PYTHON_GIL=1"):
        Runtime(tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_a_lease_shorter_than_two_sweeps_is_refused() -> None:
    """The lease is renewed on the sweep: a 0.2 s lease on 0.25 s sweeps lapsed between
    renewals, and a standby took it from a healthy runtime at once."""
    with pytest.raises(InvalidInput, match=r"lease 0.2 s is shorter than two sweeps \(0.25 s"):
        RuntimeConfig(lease=0.2)
    with pytest.raises(InvalidInput, match="at least 2 x sweep_interval"):
        RuntimeConfig(lease=5.0, sweep_interval=3.0)
    assert RuntimeConfig(lease=0.5).lease == 0.5
