"""SIGKILL at random moments in a continuous stream of messages (seeded).

FRA sends to DEU directly and to KEN through DEU (FRA - DEU - KEN), while an
officer thread posts to FRA's API without pause. `kill_stream` kills one
node at a time, the sender, the receiver-and-relay or the receiver, at a
moment drawn from the seed, restarts it, and goes on once it serves; then waits for every
message in FRA's outbox to be delivered. The caller runs the checks of
`tests.faults.checks`. A failure names its seed: the same seed draws the same
victims and the same pauses (the stream's timing is the machine's).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from network.samples import sample_body
from tests import harness
from tests.faults.checks import undelivered
from tests.harness import Network, wait_for

__all__ = ["KillRun", "kill_network", "kill_stream"]

LINKS = {"FRA": ["DEU"], "DEU": ["KEN"], "KEN": []}
VICTIMS = ("FRA", "DEU", "KEN")


def kill_network(root: Path) -> Network:
    """The three nodes, a short end-to-end retry so that a receipt lost in a kill is soon asked
    for again."""
    return Network(root, LINKS, retry_seconds=2)


@dataclass
class KillRun:
    seed: int
    kills: list[tuple[str, float]] = field(default_factory=list)  # (victim, seconds into run)
    accepted: set[str] = field(default_factory=set)  # ids the API answered 202 for
    unanswered: int = 0  # posts cut off by a kill (in the outbox or not: both are fine)

    def __str__(self) -> str:
        victims = ",".join(v for v, _ in self.kills)
        return f"seed {self.seed}: {len(self.kills)} kills ({victims}), {len(self.accepted)} sent"


class _Officer(threading.Thread):
    """Posts to FRA's API, alternating DEU and KEN, until told to stop."""

    def __init__(self, network: Network, run: KillRun, interval: float) -> None:
        super().__init__(daemon=True)
        self.network, self.run_, self.interval = network, run, interval
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        index = 0
        while not self.stopping.is_set():
            to = ("DEU", "KEN")[index % 2]
            body = {"to": to, "type": "emergency", "priority": "urgent"}
            try:
                status, answer = self.network.api(
                    "FRA", "POST", "/api/messages", {**body, "body": sample_body("emergency")}
                )
            except OSError:  # FRA is down, or died while answering
                with self.lock:
                    self.run_.unanswered += 1
                self.stopping.wait(0.05)  # an officer retrying while FRA is down
                continue
            if status == 202:
                with self.lock:
                    self.run_.accepted.add(answer["id"])
                index += 1
            self.stopping.wait(self.interval)  # an officer's pace, cut short by the stop


def kill_stream(
    network: Network,
    *,
    seed: int,
    kills: int,
    pause: tuple[float, float] = (0.05, 0.5),
    interval: float = 0.02,
    settle: float = 90.0,
) -> KillRun:
    """Kill and restart `kills` times during the stream; return when all is delivered."""
    rng = random.Random(seed)
    run = KillRun(seed)
    network.start(*VICTIMS)
    # Each node its share of the kills, in an order drawn from the seed.
    victims = [VICTIMS[index % len(VICTIMS)] for index in range(kills)]
    rng.shuffle(victims)
    officer = _Officer(network, run, interval)
    officer.start()
    started = time.monotonic()
    try:
        for victim in victims:
            harness.pause(rng.uniform(*pause), "a kill at a moment drawn from the seed")
            run.kills.append((victim, round(time.monotonic() - started, 2)))
            network.kill(victim)
            network.start(victim)
        harness.pause(rng.uniform(*pause), "the stream goes on after the last kill")
    finally:
        officer.stopping.set()
        officer.join(timeout=15)
    try:
        wait_for(lambda: not undelivered(network, "FRA"), settle, what="every message delivered")
    except AssertionError:
        left = undelivered(network, "FRA")
        raise AssertionError(f"{run}: {left} messages not delivered after {settle}s") from None
    return run
