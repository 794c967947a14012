"""bench/flash_path.py's split of a flash message's way: each hop from the points the
probe noted and the audit entries' times, and only for messages seen at every point."""

from __future__ import annotations

from bench.flash_path import HOPS, first_seen, hop_times


def test_a_message_seen_at_every_point_counts_in_every_hop() -> None:
    # Two messages, each point one millisecond after the one before; b's second point 5 ms.
    points: dict[tuple[str, str], dict[str, float]] = {}
    starts = [start for _, start, _ in HOPS] + [HOPS[-1][2]]
    for index, point in enumerate(starts):
        points.setdefault(point, {})["a"] = 100.0 + index
        points.setdefault(point, {})["b"] = 200.0 + index + (4 if index >= 1 else 0)
    spent = hop_times(points, ["a", "b"])
    assert list(spent) == [name for name, _, _ in HOPS]
    first = HOPS[0][0]
    assert spent[first] == [1.0, 5.0]
    assert all(values == [1.0, 1.0] for name, values in spent.items() if name != first)


def test_a_message_missing_a_point_counts_in_no_hop() -> None:
    points: dict[tuple[str, str], dict[str, float]] = {}
    starts = [start for _, start, _ in HOPS] + [HOPS[-1][2]]
    for index, point in enumerate(starts):
        points.setdefault(point, {})["a"] = float(index)
        if point != ("DEU", "in"):  # the probe did not see b's frame arrive
            points.setdefault(point, {})["b"] = float(index)
    spent = hop_times(points, ["a", "b", "never seen"])
    assert all(len(values) == 1 for values in spent.values())


def test_each_id_is_first_seen_when_it_was_first_noted_in_wall_clock_ms() -> None:
    events = [
        (1.0, "out", ["a"]),
        (1.5, "out", ["a", "b"]),  # a again (a frame sent twice): its first time stays
        (2.0, "in", ["b"]),
    ]
    seen = first_seen(events, offset=1000.0)
    assert seen == {"out": {"a": 1_001_000.0, "b": 1_001_500.0}, "in": {"b": 1_002_000.0}}
