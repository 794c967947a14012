"""The live-event hub: a slow reader is dropped, never waited on; closing ends every reader."""

from __future__ import annotations

import pytest

from network.node.events import Hub, HubFullError

pytestmark = pytest.mark.timeout(10)


async def test_every_subscriber_gets_each_event_in_order() -> None:
    hub = Hub()
    first, second = hub.subscribe(), hub.subscribe()

    hub.publish({"kind": "message", "id": "a"})
    hub.publish({"kind": "state", "id": "a"})

    for subscription in (first, second):
        assert await subscription.next(1) == {"kind": "message", "id": "a"}
        assert await subscription.next(1) == {"kind": "state", "id": "a"}


async def test_a_quiet_hub_says_so_after_the_timeout() -> None:
    subscription = Hub().subscribe()

    assert await subscription.next(0.01) is False


async def test_a_slow_subscriber_is_dropped_and_the_others_go_on() -> None:
    hub = Hub(max_queued=3)
    slow, fast = hub.subscribe(), hub.subscribe()

    for n in range(3):
        hub.publish({"n": n})
        assert await fast.next(1) == {"n": n}
    hub.publish({"n": 3})  # one more than the slow reader's queue holds

    assert slow.dropped and len(hub) == 1
    assert await slow.next(1) is None  # its stale queue is gone: it reconnects and reloads
    assert await fast.next(1) == {"n": 3}


async def test_closing_ends_every_subscription_and_refuses_new_ones() -> None:
    hub = Hub()
    subscription = hub.subscribe()
    hub.publish({"n": 1})

    hub.close()

    assert await subscription.next(1) is None
    with pytest.raises(HubFullError, match="stopping"):
        hub.subscribe()


async def test_subscribers_are_bounded_and_leaving_frees_a_place() -> None:
    hub = Hub(max_subscribers=2)
    first = hub.subscribe()
    hub.subscribe()

    with pytest.raises(HubFullError, match="at most 2"):
        hub.subscribe()
    first.close()

    assert hub.subscribe() is not None and len(hub) == 2
