"""network.core.budget: audit entries per key and window, and the count of those held back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from network.core.auditlog import AuditEntry
from network.core.budget import AuditBudget


def test_a_window_lets_limit_entries_through_then_counts_the_rest() -> None:
    budget = AuditBudget(limit=2, window_ms=1000)

    taken = [budget.take("USA", now) for now in (0, 10, 20, 30, 999)]

    assert taken == [0, 0, None, None, None]
    assert budget.held_back("USA") == 3


def test_the_next_entry_let_through_carries_what_was_held_back() -> None:
    budget = AuditBudget(limit=1, window_ms=1000)
    budget.take("USA", 0)
    budget.take("USA", 1)
    budget.take("USA", 2)

    assert budget.take("USA", 1000) == 2
    assert budget.held_back("USA") == 0
    assert budget.take("USA", 1001) is None


def test_keys_have_windows_of_their_own() -> None:
    budget = AuditBudget(limit=1, window_ms=1000)

    assert budget.take("USA", 0) == 0
    assert budget.take("DEU", 0) == 0
    assert budget.take("USA", 1) is None


def test_the_keys_remembered_are_bounded() -> None:
    budget = AuditBudget(limit=1, window_ms=1000, max_keys=3)

    for n in range(100):
        budget.take(f"10.0.0.{n}", 0)

    assert len(budget._windows) == 3


def test_a_clock_that_goes_back_starts_a_new_window() -> None:
    budget = AuditBudget(limit=1, window_ms=1000)
    budget.take("USA", 5000)

    assert budget.take("USA", 100) == 0


@given(st.lists(st.integers(0, 10_000), max_size=200), st.integers(1, 5))
def test_never_more_than_limit_per_window_and_nothing_uncounted(
    times: list[int], limit: int
) -> None:
    budget = AuditBudget(limit=limit, window_ms=1000)
    let_through = reported = 0
    windows: dict[int, int] = {}
    start = None
    for now in sorted(times):
        if start is None or now - start >= 1000:
            start = now
        got = budget.take("k", now)
        if got is not None:
            let_through += 1
            reported += got
            windows[start] = windows.get(start, 0) + 1

    assert all(n <= limit for n in windows.values())
    assert let_through + reported + budget.held_back("k") == len(times)


def test_admit_adds_the_count_held_back_to_the_entry_let_through() -> None:
    budget = AuditBudget(limit=1, window_ms=1000)
    entry = AuditEntry("node:USA", "rejected", None, {"reason": "bad_signature"})

    assert budget.admit("USA", entry, 0) == entry
    assert budget.admit("USA", entry, 1) is None
    assert budget.admit("USA", entry, 2) is None
    admitted = budget.admit("USA", entry, 1000)

    assert admitted is not None and admitted.detail == {"reason": "bad_signature", "suppressed": 2}


def test_counts_held_back_are_reported_once_their_window_ends_or_at_the_end() -> None:
    budget = AuditBudget(limit=1, window_ms=1000)
    for now in (0, 1, 2):
        budget.take("USA", now)
    budget.take("CHE", 500)
    budget.take("CHE", 501)

    assert budget.unreported(999) == []  # both windows still open: a later entry may carry it
    assert budget.unreported(1000) == [("USA", 2)]
    assert budget.unreported(1000) == []  # reported once
    assert budget.unreported() == [("CHE", 1)]  # the node stops: every count
    assert budget.take("USA", 1000) == 0  # not counted twice
