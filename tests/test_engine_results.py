"""A wide run's results (actors/engine/_results.py) and the view each attempt gets of
them (actors/_results.py): taken in O(1), and never changed by what happens later."""

from __future__ import annotations

import pytest

from herder.actors._results import Results
from herder.actors.engine import ResultLog

pytestmark = pytest.mark.timeout(30)


def test_a_view_holds_what_had_succeeded_when_it_was_taken() -> None:
    log = ResultLog([("a", 1), ("b", 2)])
    view = Results.viewing(log)
    assert log.added("c", 3) is log  # (a success appends: the views stay valid)
    assert (len(view), "c" in view, view.get("c")) == (2, False, None)
    with pytest.raises(KeyError):
        view["c"]
    assert view == {"a": 1, "b": 2}
    assert list(Results.viewing(log)) == ["a", "b", "c"]


def test_a_step_that_stops_having_succeeded_leaves_older_views_as_they_were() -> None:
    log = ResultLog([("a", 1), ("b", 2), ("c", 3)])
    before = Results.viewing(log)
    reset = log.without("b")  # (an operator's reset, a compensation)
    assert reset is not log
    again = reset.added("b", 20)  # (it succeeds again: last, as in a gathered dict)
    assert dict(before) == {"a": 1, "b": 2, "c": 3}
    assert list(before.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert list(Results.viewing(again).items()) == [("a", 1), ("c", 3), ("b", 20)]
    assert log.without("absent") is log


def test_another_result_for_a_step_keeps_its_place_in_a_new_log() -> None:
    log = ResultLog([("a", 1), ("b", 2)])
    view = Results.viewing(log)
    same = log.added("b", log.values[1])
    changed = log.added("b", 5)
    assert same is log
    assert changed is not log
    assert list(Results.viewing(changed).items()) == [("a", 1), ("b", 5)]
    assert view["b"] == 2


def test_reading_one_result_copies_nothing_else() -> None:
    # An attempt of a wide workflow that reads one result (the root's, say) must not pay
    # for every earlier result: the copies per attempt, and the garbage collector walking
    # them while young, were half the time of a 20,000-step run (benchmarks/wide.py).
    log = ResultLog((f"s{i}", {"i": i}) for i in range(10_000))
    view = Results.viewing(log)
    assert view["s7"] == {"i": 7}
    assert "s9999" in view
    assert len(view) == 10_000
    assert dict.__len__(view) == 0  # nothing was copied into the view's own dict
    view["mine"] = {"n": 1}  # a change fills it first, then is the action's own
    assert dict.__len__(view) == 10_001
    assert view["mine"] == {"n": 1}
    assert "mine" not in Results.viewing(log)


def test_a_view_hands_out_copies_and_keeps_the_log_untouched() -> None:
    kept = {"rows": [1, 2]}
    log = ResultLog([("a", kept)])
    view = Results.viewing(log)
    view["a"]["rows"].append(3)
    del view["a"]
    assert kept == {"rows": [1, 2]}
    assert log.values == [kept]
    assert "a" not in view
    assert "a" in Results.viewing(log)
    assert Results.viewing(log).kept() == {"a": kept}  # (as kept: for another process)
