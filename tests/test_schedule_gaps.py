"""A cron schedule's jitter must stay under the shortest gap between two of its slots,
which a DST change shortens wherever in the year (and in which hemisphere) it falls."""

from __future__ import annotations

import time

import pytest

from herder.runtime import InvalidInput, _schedules
from herder.runtime._schedules import new_schedule
from herder.store import ScheduleRecord

HOUR = 3600


def daily(cron: str, timezone: str, jitter: float) -> ScheduleRecord:
    return new_schedule(
        "nightly",
        "job",
        0.0,
        input=None,
        cron=cron,
        every=None,
        overlap="skip",
        catch_up="latest",
        jitter=jitter,
        timezone=timezone,
    )


@pytest.mark.parametrize(
    ("cron", "timezone", "shortest"),
    [
        # 02:30 falls in the hour skipped on Sydney's spring-forward night (October):
        # it runs at 03:00 then, 23.5 h after the night before.
        ("30 2 * * *", "Australia/Sydney", 23.5 * HOUR),
        # Lord Howe springs forward by 30 minutes, 02:00 -> 02:30 (October).
        ("30 2 * * *", "Australia/Lord_Howe", 23.5 * HOUR),
        # Santiago skips the hour after midnight (September): a 23-hour day.
        ("0 0 * * *", "America/Santiago", 23 * HOUR),
        # (A northern spring forward in March was already seen.)
        ("30 2 * * *", "Europe/Riga", 23 * HOUR),
    ],
)
def test_a_jitter_as_long_as_the_day_a_dst_change_shortens_is_refused(
    cron: str, timezone: str, shortest: float
) -> None:
    with pytest.raises(InvalidInput, match=rf"less than the {shortest:g} s between its closest"):
        daily(cron, timezone, shortest)
    assert daily(cron, timezone, shortest - 1).jitter == shortest - 1


@pytest.mark.parametrize("timezone", ["Australia/Sydney", "America/Santiago", "Asia/Gaza"])
def test_the_shortest_gap_is_the_shortest_of_two_years_of_slots(timezone: str) -> None:
    """Against every slot of two years from the day it looks at (rules of today)."""
    for cron in ("30 2 * * *", "0 0 * * *", "45 23 * * *", "0 1 * * 6"):
        record = daily(cron, timezone, 0.0)
        slot, end = _schedules._GAP_FROM, _schedules._GAP_FROM + 2 * 365 * 86_400_000
        gaps = []
        while (following := _schedules.next_slot(record, slot)) is not None and following < end:
            gaps.append(following - slot)
            slot = following
        assert _schedules._shortest_gap(record) == min(gaps[1:]), cron


@pytest.mark.timeout(60)
def test_checking_a_cron_schedule_is_cheap_and_refuses_as_much() -> None:
    """The gap is looked for only when a jitter could reach it (slots are whole seconds
    apart), and once per expression and zone: 400 schedules are checked in well under a
    second (each cost ~10 ms of cron steps: 2,000 schedules took 22 s)."""
    began = time.perf_counter()
    for i in range(200):
        daily(f"{i % 60} 2 * * *", "Europe/Riga", 0.0)
        daily("30 2 * * *", "Europe/Riga", 3600.0)
    assert time.perf_counter() - began < 1.0
    assert daily("* * * * * *", "UTC", 0.999).jitter == 0.999  # (under the 1 s between)
    with pytest.raises(InvalidInput, match=r"less than the 1 s between its closest"):
        daily("* * * * * *", "UTC", 1.0)
    with pytest.raises(InvalidInput, match=r"less than the 82800 s between its closest"):
        daily("30 2 * * *", "Europe/Riga", 23 * HOUR)  # (asked again: the same answer)
