"""Deadlines: defaults, due times, what is overdue in each state, when to look
again, the watcher's decisions, and the `[deadlines]` / `[alerts]` config."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from network.core.deadlines import (
    DAY,
    DEFAULT_DEADLINES,
    HOUR,
    MINUTE,
    Box,
    Deadlines,
    Overdue,
    PriorityDeadlines,
    Tracked,
    describe,
    due_times,
    expects_reply,
    format_overdue,
    next_alert,
    parse_overdue,
    pending,
    preservation_period_problem,
    preserved_until_ms,
    reschedule,
    review,
)
from network.core.errors import ConfigError
from network.core.lifecycle import State
from network.core.records import MessageType, Priority
from network.node.config import load_config, parse_duration

CREATED = 1_795_000_000_000
D = DEFAULT_DEADLINES
FLASH = D.per_priority[Priority.FLASH]
R, A, P, PX = (
    Overdue.RECEIPT,
    Overdue.ACKNOWLEDGEMENT,
    Overdue.RESPONSE,
    Overdue.PRESERVATION_EXPIRING,
)

OUT_STATES = (
    State.QUEUED,
    State.SENT,
    State.DELIVERED,
    State.ACKNOWLEDGED,
    State.ANSWERED,
    State.EXPIRED,
    State.REJECTED,
)
IN_STATES = (State.RECEIVED, State.OPENED, State.ACKNOWLEDGED, State.ANSWERED)


def tracked(
    box: Box = "out",
    state: State = State.SENT,
    priority: Priority = Priority.FLASH,
    deadlines: Deadlines = D,
    **changes: object,
) -> Tracked:
    due = due_times(deadlines, priority, CREATED, box)
    base = Tracked(
        box=box,
        state=state,
        priority=priority,
        receipt_due=due.receipt,
        ack_due=due.acknowledgement,
        response_due=due.response,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# --- defaults -------------------------------------------------------------------------


@pytest.mark.parametrize("attr", ["receipt_ms", "ack_ms", "response_ms", "repeat_ms"])
def test_defaults_are_shorter_for_higher_priorities(attr: str) -> None:
    flash, urgent, routine = (getattr(D.per_priority[p], attr) for p in Priority)

    assert flash < urgent < routine


@pytest.mark.parametrize("priority", list(Priority))
def test_defaults_run_receipt_then_acknowledgement_then_response(priority: Priority) -> None:
    d = D.per_priority[priority]

    assert d.receipt_ms < d.ack_ms < d.response_ms
    assert d.repeat_ms <= d.ack_ms


def test_default_values_a_duty_officer_expects() -> None:
    assert D.per_priority[Priority.FLASH] == PriorityDeadlines(
        5 * MINUTE, 15 * MINUTE, 4 * HOUR, 5 * MINUTE
    )
    assert D.per_priority[Priority.URGENT] == PriorityDeadlines(
        30 * MINUTE, 2 * HOUR, DAY, 30 * MINUTE
    )
    assert D.per_priority[Priority.ROUTINE] == PriorityDeadlines(4 * HOUR, DAY, 10 * DAY, 4 * HOUR)
    assert D.preservation_warning_ms == 10 * DAY
    assert D.preservation_repeat_ms == DAY


def test_deadlines_need_every_priority() -> None:
    with pytest.raises(ValueError, match="missing for urgent, routine"):
        Deadlines(per_priority={Priority.FLASH: FLASH})


def test_deadlines_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PriorityDeadlines(receipt_ms=0, ack_ms=1, response_ms=1, repeat_ms=1)


def test_deadlines_cannot_be_changed_after_the_fact() -> None:
    with pytest.raises(TypeError):
        D.per_priority[Priority.FLASH] = FLASH  # type: ignore[index]
    assert hash(D) == hash(D)


# --- due times ------------------------------------------------------------------------


def test_outbound_due_times_run_from_created() -> None:
    due = due_times(D, Priority.FLASH, CREATED, "out")

    assert due == (CREATED + 5 * MINUTE, CREATED + 15 * MINUTE, CREATED + 4 * HOUR)


def test_inbound_has_no_receipt_deadline() -> None:
    due = due_times(D, Priority.URGENT, CREATED, "in")

    assert due.receipt is None
    assert due.acknowledgement == CREATED + 2 * HOUR
    assert due.response == CREATED + DAY


def test_acknowledgements_and_responses_await_only_their_receipt() -> None:
    due = due_times(D, Priority.ROUTINE, CREATED, "out", reply=False)

    assert due == (CREATED + 4 * HOUR, None, None)
    assert not expects_reply(MessageType.ACKNOWLEDGEMENT)
    assert not expects_reply(MessageType.RESPONSE)
    assert expects_reply(MessageType.PRESERVATION)
    assert expects_reply(MessageType.EMERGENCY)


# --- pending --------------------------------------------------------------------------

AFTER_ALL = CREATED + FLASH.response_ms


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (State.QUEUED, [R, A, P]),
        (State.SENT, [R, A, P]),
        (State.DELIVERED, [A, P]),
        (State.ACKNOWLEDGED, [P]),
        (State.ANSWERED, []),
        (State.EXPIRED, []),  # raised where it expires
        (State.REJECTED, []),  # raised where the refusal arrives
    ],
)
def test_outbound_pending_by_state(state: State, expected: list[Overdue]) -> None:
    assert pending(tracked("out", state), D, AFTER_ALL) == expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (State.RECEIVED, [A, P]),
        (State.OPENED, [A, P]),
        (State.ACKNOWLEDGED, [P]),
        (State.ANSWERED, []),
    ],
)
def test_inbound_pending_by_state(state: State, expected: list[Overdue]) -> None:
    assert pending(tracked("in", state), D, AFTER_ALL) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (CREATED, []),
        (CREATED + 5 * MINUTE - 1, []),
        (CREATED + 5 * MINUTE, [R]),  # due == now is overdue
        (CREATED + 15 * MINUTE, [R, A]),
        (CREATED + 4 * HOUR - 1, [R, A]),
        (CREATED + 4 * HOUR, [R, A, P]),
    ],
)
def test_outbound_pending_over_time(now: int, expected: list[Overdue]) -> None:
    assert pending(tracked("out", State.QUEUED), D, now) == expected


@pytest.mark.parametrize("box", ["out", "in"])
@pytest.mark.parametrize("state", sorted(set(OUT_STATES) | set(IN_STATES)))
def test_nothing_is_pending_before_the_first_deadline(box: Box, state: State) -> None:
    assert pending(tracked(box, state), D, CREATED + 5 * MINUTE - 1) == []


def test_states_of_the_other_side_are_not_watched() -> None:
    assert pending(tracked("in", State.QUEUED), D, AFTER_ALL) == []
    assert pending(tracked("out", State.OPENED), D, AFTER_ALL) == []


# --- the preservation warning ---------------------------------------------------------

UNTIL = preserved_until_ms("2027-02-18")


def preserved(**changes: object) -> Tracked:
    return dataclasses.replace(
        tracked("out", State.ANSWERED, preserved_until=UNTIL),
        **changes,  # type: ignore[arg-type]
    )


def test_preserved_until_is_the_start_of_the_day_in_utc() -> None:
    assert UNTIL == 1_802_908_800_000  # 2027-02-18T00:00:00Z


@pytest.mark.parametrize("text", ["20270218", "2027-02-30", "2027-2-18", "", "2027-02-18T00:00"])
def test_preserved_until_refuses_anything_but_a_full_date(text: str) -> None:
    with pytest.raises(ValueError):
        preserved_until_ms(text)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (UNTIL - 10 * DAY - 1, []),
        (UNTIL - 10 * DAY, [PX]),
        (UNTIL - 1, [PX]),
        # The window closes when the preservation does, and the lapse is raised (issue 19:
        # the warning stopped silently).
        (UNTIL, [Overdue.PRESERVATION_LAPSED]),
    ],
)
def test_preservation_warning_window(now: int, expected: list[Overdue]) -> None:
    assert pending(preserved(), D, now) == expected


def test_preservation_warning_follows_the_configured_time() -> None:
    two_days = dataclasses.replace(D, preservation_warning_ms=2 * DAY)

    assert pending(preserved(), two_days, UNTIL - 3 * DAY) == []
    assert pending(preserved(), two_days, UNTIL - 2 * DAY) == [PX]


def test_preservation_is_looked_at_when_its_warning_starts() -> None:
    assert next_alert(preserved(), D, UNTIL - 30 * DAY, alerted=False) == UNTIL - 10 * DAY


def test_preservation_repeats_daily_and_stops_when_it_lapses() -> None:
    now = UNTIL - 10 * DAY
    lapsed = preserved(overdue=frozenset({Overdue.PRESERVATION_LAPSED}))

    assert next_alert(preserved(), D, now, alerted=True) == now + DAY
    assert next_alert(preserved(), D, UNTIL - HOUR, alerted=True) == UNTIL  # to lift the flag
    assert next_alert(preserved(), D, UNTIL, alerted=False) == UNTIL  # to raise the lapse
    assert next_alert(preserved(), D, UNTIL, alerted=True) is None  # raised: no repeat
    assert next_alert(lapsed, D, UNTIL + DAY, alerted=False) is None


def test_a_follow_up_ends_the_warnings() -> None:
    # With no date held (no preservation answered), nothing is watched.
    now = UNTIL - 5 * DAY
    followed = preserved(overdue=frozenset({PX}), alert_at=now, preserved_until=None)

    result = reschedule(followed, D, now)

    assert result.overdue == frozenset()
    assert result.alert_at is None


# --- next_alert -----------------------------------------------------------------------


def test_repeat_after_an_alert() -> None:
    now = CREATED + 20 * MINUTE
    t = tracked("out", State.DELIVERED, overdue=frozenset({A}))

    assert next_alert(t, D, now, alerted=True) == now + FLASH.repeat_ms


def test_a_deadline_falling_due_before_the_repeat_comes_first() -> None:
    now = CREATED + 4 * HOUR - MINUTE
    t = tracked("out", State.DELIVERED, overdue=frozenset({A}))

    assert next_alert(t, D, now, alerted=True) == CREATED + 4 * HOUR


def test_the_earliest_future_deadline_when_nothing_is_pending() -> None:
    assert next_alert(tracked("out", State.QUEUED), D, CREATED, alerted=False) == (
        CREATED + 5 * MINUTE
    )
    assert next_alert(tracked("out", State.DELIVERED), D, CREATED, alerted=False) == (
        CREATED + 15 * MINUTE
    )
    assert next_alert(tracked("in", State.RECEIVED), D, CREATED, alerted=False) == (
        CREATED + 15 * MINUTE
    )
    assert next_alert(tracked("in", State.ACKNOWLEDGED), D, CREATED, alerted=False) == (
        CREATED + 4 * HOUR
    )


def test_now_when_a_passed_deadline_is_not_flagged_yet() -> None:
    now = CREATED + 20 * MINUTE

    assert next_alert(tracked("out", State.DELIVERED), D, now, alerted=False) == now


def test_a_scheduled_repeat_is_kept_across_other_changes() -> None:
    now = CREATED + 20 * MINUTE
    t = tracked("out", State.DELIVERED, overdue=frozenset({A}), alert_at=now + 3 * MINUTE)

    assert next_alert(t, D, now, alerted=False) == now + 3 * MINUTE


@pytest.mark.parametrize(
    ("box", "state"),
    [
        ("out", State.ANSWERED),
        ("out", State.EXPIRED),
        ("out", State.REJECTED),
        ("in", State.ANSWERED),
    ],
)
def test_none_when_nothing_is_left_to_watch(box: Box, state: State) -> None:
    assert next_alert(tracked(box, state), D, CREATED, alerted=False) is None
    assert next_alert(tracked(box, state), D, AFTER_ALL, alerted=True) is None


# --- review and reschedule ------------------------------------------------------------


def test_review_flags_audits_and_alerts_a_newly_passed_deadline() -> None:
    now = CREATED + 15 * MINUTE
    t = tracked("out", State.DELIVERED, alert_at=now)

    result = review(t, D, now)

    assert result.overdue == frozenset({A})
    assert result.newly == (A,)
    assert result.alert == (A,)
    assert result.alert_at == now + FLASH.repeat_ms


def test_review_repeats_without_auditing_again() -> None:
    now = CREATED + 20 * MINUTE
    t = tracked("out", State.DELIVERED, overdue=frozenset({A}), alert_at=now)

    result = review(t, D, now)

    assert result.newly == ()
    assert result.alert == (A,)
    assert result.alert_at == now + FLASH.repeat_ms


def test_review_before_the_repeat_is_due_does_nothing() -> None:
    now = CREATED + 20 * MINUTE
    t = tracked("out", State.DELIVERED, overdue=frozenset({A}), alert_at=now + MINUTE)

    result = review(t, D, now)

    assert result.alert == ()
    assert result.newly == ()
    assert result.alert_at == now + MINUTE


def test_a_new_deadline_alerts_everything_pending_at_once() -> None:
    now = CREATED + 4 * HOUR
    t = tracked("out", State.DELIVERED, overdue=frozenset({A}), alert_at=now + MINUTE)

    result = review(t, D, now)

    assert result.newly == (P,)
    assert result.alert == (A, P)


def test_reschedule_after_acknowledgement_lifts_the_flag() -> None:
    now = CREATED + 20 * MINUTE
    t = tracked("out", State.ACKNOWLEDGED, overdue=frozenset({A}), alert_at=now + MINUTE)

    result = reschedule(t, D, now)

    assert result.overdue == frozenset()
    assert (result.newly, result.alert) == ((), ())
    assert result.alert_at == CREATED + 4 * HOUR


def test_reschedule_leaves_a_newly_passed_deadline_to_the_watcher() -> None:
    now = CREATED + 5 * HOUR
    t = tracked("in", State.ACKNOWLEDGED, overdue=frozenset({A}), alert_at=now + MINUTE)

    result = reschedule(t, D, now)

    assert result.overdue == frozenset()  # not flagged until the watcher audits it
    assert result.alert_at == now


def test_reschedule_after_the_answer_stops_watching() -> None:
    now = CREATED + 5 * HOUR
    t = tracked("in", State.ANSWERED, overdue=frozenset({A, P}), alert_at=now)

    result = reschedule(t, D, now)

    assert result.overdue == frozenset()
    assert result.alert_at is None


# --- flags and descriptions -----------------------------------------------------------


def test_overdue_flags_round_trip_in_a_fixed_order() -> None:
    assert format_overdue([P, R]) == "receipt,response"
    assert format_overdue([]) == ""
    assert parse_overdue("receipt,response") == frozenset({R, P})
    assert parse_overdue("") == frozenset()


def test_unknown_overdue_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="late"):
        parse_overdue("receipt,late")


def test_describe_says_what_is_late_and_by_how_much() -> None:
    now = CREATED + 15 * MINUTE + 2 * HOUR + 7 * MINUTE

    outbound = describe(A, tracked("out", State.DELIVERED), now)
    inbound = describe(P, tracked("in", State.OPENED), CREATED + 4 * HOUR + DAY)
    warning = describe(PX, preserved(), UNTIL - 9 * DAY)

    assert outbound == (
        "not acknowledged by the receiving officers: due 2026-11-18 11:21 UTC, 2 h 7 min overdue"
    )
    assert inbound == "not answered by our officers: due 2026-11-18 15:06 UTC, 1 d overdue"
    assert warning == (
        "data preserved until 2027-02-18 00:00 UTC (9 d left):"
        " send an extension or the MLA notice before then"
    )


# --- properties -----------------------------------------------------------------------


@st.composite
def deadlines_st(draw: st.DrawFn) -> Deadlines:
    def one() -> PriorityDeadlines:
        receipt = draw(st.integers(1, 10_000))
        ack = receipt + draw(st.integers(0, 10_000))
        response = ack + draw(st.integers(0, 10_000))
        return PriorityDeadlines(receipt, ack, response, repeat_ms=draw(st.integers(100, 10_000)))

    return Deadlines(
        per_priority={p: one() for p in Priority},
        preservation_warning_ms=draw(st.integers(1, 10_000)),
        preservation_repeat_ms=draw(st.integers(100, 10_000)),
    )


@st.composite
def tracked_st(draw: st.DrawFn) -> tuple[Tracked, Deadlines]:
    deadlines = draw(deadlines_st())
    box: Box = draw(st.sampled_from(["out", "in"]))
    state = draw(st.sampled_from(OUT_STATES if box == "out" else IN_STATES))
    t = tracked(box, state, draw(st.sampled_from(list(Priority))), deadlines)
    preserved_until = draw(st.none() | st.integers(CREATED, CREATED + 40_000))
    overdue = frozenset(draw(st.sets(st.sampled_from(list(Overdue)))))
    alert_at = draw(st.none() | st.integers(CREATED - 1000, CREATED + 50_000))
    changed = dataclasses.replace(
        t, preserved_until=preserved_until, overdue=overdue, alert_at=alert_at
    )
    return changed, deadlines


@given(tracked_st(), st.integers(CREATED - 1000, CREATED + 50_000), st.booleans())
def test_next_alert_is_never_in_the_past(
    case: tuple[Tracked, Deadlines], now: int, alerted: bool
) -> None:
    t, deadlines = case

    at = next_alert(t, deadlines, now, alerted)

    assert at is None or at >= now
    repeating = [i for i in pending(t, deadlines, now) if i is not Overdue.PRESERVATION_LAPSED]
    if alerted and repeating:  # a lapse is raised once, never repeated
        assert at is not None
        assert now < at <= now + deadlines.per_priority[t.priority].repeat_ms or (
            PX in pending(t, deadlines, now) and at <= now + deadlines.preservation_repeat_ms
        )


@given(tracked_st(), st.integers(0, 50_000), st.integers(0, 50_000))
def test_deadlines_once_passed_stay_passed(case: tuple[Tracked, Deadlines], a: int, b: int) -> None:
    t, deadlines = case
    early, late = CREATED + min(a, b), CREATED + max(a, b)

    before = set(pending(t, deadlines, early)) - {PX}
    after = set(pending(t, deadlines, late)) - {PX}

    assert before <= after


PATHS: dict[Box, tuple[State, ...]] = {
    "out": (State.QUEUED, State.SENT, State.DELIVERED, State.ACKNOWLEDGED, State.ANSWERED),
    "in": (State.RECEIVED, State.OPENED, State.ACKNOWLEDGED, State.ANSWERED),
}


@given(tracked_st(), st.integers(0, 50_000))
def test_acting_never_makes_more_overdue(case: tuple[Tracked, Deadlines], offset: int) -> None:
    t, deadlines = case
    now = CREATED + offset
    path = PATHS[t.box]

    sets = [set(pending(dataclasses.replace(t, state=s), deadlines, now)) for s in path]

    assert all(later <= earlier for earlier, later in itertools.pairwise(sets))
    assert sets[-1] <= {PX, Overdue.PRESERVATION_LAPSED}


@settings(max_examples=60)
@given(tracked_st())
def test_the_watcher_alerts_each_deadline_when_it_passes_then_every_repeat(
    case: tuple[Tracked, Deadlines],
) -> None:
    # A watcher that wakes exactly at `alert_at`, on a message whose state stays put.
    t, deadlines = case
    t = dataclasses.replace(t, preserved_until=None, overdue=frozenset(), alert_at=None)
    t = dataclasses.replace(t, alert_at=reschedule(t, deadlines, CREATED).alert_at)
    repeat = deadlines.per_priority[t.priority].repeat_ms
    horizon = CREATED + 30_000 + 5 * repeat
    first: dict[Overdue, int] = {}
    alerts: list[int] = []

    while t.alert_at is not None and t.alert_at <= horizon:
        now = t.alert_at
        result = review(t, deadlines, now)
        if result.alert:
            alerts.append(now)
        for item in result.newly:
            first[item] = now
        assert result.alert_at is None or result.alert_at > now  # always progress
        t = dataclasses.replace(t, overdue=result.overdue, alert_at=result.alert_at)

    due = {R: t.receipt_due, A: t.ack_due, P: t.response_due}
    assert first == {item: due[item] for item in pending(t, deadlines, horizon)}
    assert all(0 < b - a <= repeat for a, b in itertools.pairwise(alerts))


# --- config ---------------------------------------------------------------------------

BASE = """id = "FRA"
[peer]
listen = "127.0.0.1:7101"
[api]
listen = "127.0.0.1:8101"
[store]
path = "s"
[keys]
dir = "k"
roster = "r"
keeper = "p"
"""


def write(tmp_path: Path, extra: str) -> Path:
    """BASE with `extra`: tables after it, top-level keys before it."""
    path = tmp_path / "FRA.toml"
    path.write_text(BASE + extra if extra.startswith("[") else extra + "\n" + BASE)
    return path


def test_config_without_sections_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))

    assert config.deadlines == DEFAULT_DEADLINES
    assert config.webhook_url is None
    assert config.webhook_timeout == 10.0
    assert config.webhook_retries == 5


def test_config_deadlines_override_what_they_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[deadlines]\npreservation_warning = "14d"\n'
        '[deadlines.flash]\nreceipt = 120\nacknowledgement = "10m"\nrepeat = "90s"\n'
        '[deadlines.routine]\nresponse = "30d"\n',
    )

    deadlines = load_config(path).deadlines

    assert deadlines.per_priority[Priority.FLASH] == PriorityDeadlines(
        2 * MINUTE, 10 * MINUTE, 4 * HOUR, 90_000
    )
    assert deadlines.per_priority[Priority.URGENT] == D.per_priority[Priority.URGENT]
    assert deadlines.per_priority[Priority.ROUTINE].response_ms == 30 * DAY
    assert deadlines.preservation_warning_ms == 14 * DAY
    assert deadlines.preservation_repeat_ms == DAY


@pytest.mark.parametrize(
    "url",
    [
        "https://alerts.example/cpn/T0KEN",
        "https://alerts.example:8443/hook?key=1",
        "http://127.0.0.1:9000/hook",
        "http://[::1]:9000/",
        "http://localhost/hook",
    ],
)
def test_config_webhook_accepted(tmp_path: Path, url: str) -> None:
    path = write(
        tmp_path, f'[alerts]\nwebhook = "{url}"\nwebhook_timeout = 2.5\nwebhook_retries = 3'
    )

    config = load_config(path)

    assert (config.webhook_url, config.webhook_timeout, config.webhook_retries) == (url, 2.5, 3)


@pytest.mark.parametrize(
    ("extra", "key", "problem"),
    [
        ("deadlines = 5", "deadlines", "expected a table"),
        ("[deadlines]\nfast = 1", "deadlines.fast", "unknown key"),
        ('[deadlines]\nflash = "5m"', "deadlines.flash", "expected a table"),
        ("[deadlines.flash]\nack = 60", "deadlines.flash.ack", "unknown key"),
        (
            '[deadlines.flash]\nacknowledgement = "-5m"',
            "deadlines.flash.acknowledgement",
            "duration",
        ),
        (
            "[deadlines.flash]\nacknowledgement = -300",
            "deadlines.flash.acknowledgement",
            "more than",
        ),
        ('[deadlines.urgent]\nresponse = "0h"', "deadlines.urgent.response", "more than zero"),
        ("[deadlines.urgent]\nresponse = 0", "deadlines.urgent.response", "more than zero"),
        ('[deadlines.routine]\nresponse = "366d"', "deadlines.routine.response", "365 days"),
        ("[deadlines.routine]\nresponse = 31622400", "deadlines.routine.response", "365 days"),
        ('[deadlines.flash]\nrepeat = "5w"', "deadlines.flash.repeat", "duration"),
        ("[deadlines.flash]\nrepeat = 1.5", "deadlines.flash.repeat", "duration"),
        ("[deadlines.flash]\nrepeat = true", "deadlines.flash.repeat", "duration"),
        ('[deadlines.flash]\nrepeat = "5 min"', "deadlines.flash.repeat", "duration"),
        (
            '[deadlines.flash]\nreceipt = "20m"',
            "deadlines.flash.acknowledgement",
            "not be shorter than deadlines.flash.receipt",
        ),
        (
            '[deadlines.urgent]\nresponse = "1h"',
            "deadlines.urgent.response",
            "not be shorter than deadlines.urgent.acknowledgement",
        ),
        ('[deadlines]\npreservation_warning = "400d"', "deadlines.preservation_warning", "365"),
        ("[deadlines]\npreservation_repeat = 0", "deadlines.preservation_repeat", "more than"),
        ("alerts = 1", "alerts", "expected a table"),
        ('[alerts]\nhook = "https://a.example/"', "alerts.hook", "unknown key"),
        ('[alerts]\nwebhook = "ftp://a.example/"', "alerts.webhook", "scheme"),
        ('[alerts]\nwebhook = "a.example/hook"', "alerts.webhook", "scheme"),
        ('[alerts]\nwebhook = "http://alerts.example/"', "alerts.webhook", "loopback"),
        ('[alerts]\nwebhook = "http://10.0.0.1/"', "alerts.webhook", "loopback"),
        ('[alerts]\nwebhook = "https://a.example:99999/"', "alerts.webhook", "not a valid URL"),
        ('[alerts]\nwebhook = "https:///hook"', "alerts.webhook", "no host"),
        ('[alerts]\nwebhook = "https://a.example/a b"', "alerts.webhook", "spaces"),
        ('[alerts]\nwebhook = "https://u:pw@a.example/"', "alerts.webhook", "user info"),
        ('[alerts]\nwebhook = ""', "alerts.webhook", "expected an http"),
        ("[alerts]\nwebhook = 5", "alerts.webhook", "expected an http"),
        ("[alerts]\nwebhook_timeout = 0", "alerts.webhook_timeout", "more than 0"),
        ("[alerts]\nwebhook_timeout = 301", "alerts.webhook_timeout", "at most 300"),
        ('[alerts]\nwebhook_timeout = "10"', "alerts.webhook_timeout", "expected seconds"),
        ("[alerts]\nwebhook_retries = 0", "alerts.webhook_retries", "1..20"),
        ("[alerts]\nwebhook_retries = 21", "alerts.webhook_retries", "1..20"),
        ("[alerts]\nwebhook_retries = 2.5", "alerts.webhook_retries", "whole number"),
        ("[alerts]\nwebhook_retries = true", "alerts.webhook_retries", "whole number"),
    ],
)
def test_config_refusals_name_file_and_key(
    tmp_path: Path, extra: str, key: str, problem: str
) -> None:
    path = write(tmp_path, extra)

    with pytest.raises(ConfigError, match=re.escape(f"{path}: {key}: ")) as caught:
        load_config(path)

    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("value", "ms"),
    [("30s", 30_000), ("15m", 15 * MINUTE), ("4h", 4 * HOUR), ("10d", 10 * DAY), (90, 90_000)],
)
def test_durations(value: object, ms: int) -> None:
    assert parse_duration(value, "x") == ms


@pytest.mark.parametrize(
    ("request_type", "date", "problem"),
    [
        (MessageType.PRESERVATION, "2026-12-02", "not after today"),
        (MessageType.PRESERVATION, "2026-12-03", "not after today"),
        (MessageType.PRESERVATION, "2027-01-31", "29(7): on or after 2027-02-01"),
        (MessageType.PRESERVATION, "2027-02-01", None),
        (MessageType.MLA_NOTICE, "2026-12-04", None),  # continued until the decision
        (MessageType.MLA_NOTICE, "2026-12-01", "not after today"),
    ],
)  # fmt: skip
def test_a_preservation_runs_60_days_at_least_and_never_ends_in_the_past(
    request_type: MessageType, date: str, problem: str | None
) -> None:
    now = preserved_until_ms("2026-12-03") + 15 * HOUR  # 15:00 UTC

    found = preservation_period_problem(request_type, date, now)

    assert found == problem if problem is None else problem in str(found)


def test_a_lapsed_preservation_is_alerted_once_on_either_side() -> None:
    for box in ("out", "in"):
        at_end = review(preserved(box=box), D, UNTIL)
        flagged = preserved(box=box, overdue=at_end.overdue, alert_at=at_end.alert_at)
        later = review(flagged, D, UNTIL + 3 * DAY)

        assert at_end.newly == at_end.alert == (Overdue.PRESERVATION_LAPSED,)
        assert later.alert == () and later.alert_at is None
        assert later.overdue == {Overdue.PRESERVATION_LAPSED}  # still shown as lapsed
        said = describe(Overdue.PRESERVATION_LAPSED, flagged, UNTIL + 3 * DAY)
        assert ("granted ended" in said) == (box == "in")
