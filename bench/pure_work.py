"""The pure per-message work of both ends, in one process: for instruction counts.

    .venv/bin/python bench/pure_work.py [N]
    valgrind --tool=callgrind .venv/bin/python bench/pure_work.py N

A sender's request parsed and checked, sealed and signed, its identifiers tagged; the
receiver's checks, opening and typing, its identifiers tagged, and its signed receipt;
the sender's check of that receipt. No store, no sockets, no event loop: what the
protocol costs apart from the node's machinery. The machine is shared and its times
move by a quarter from run to run; callgrind's instruction counts do not. Subtract a run
of N from one of N + 50 and divide by 50 for the instructions of one message (the key
making and imports fall out).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from network.core.bodies import parse_request
from network.core.crypto import generate_signing_key, generate_storage_key
from network.core.envelope import (
    check_receipt_for,
    make_receipt,
    open_envelope,
    seal,
    verify_envelope,
    verify_receipt,
)
from network.core.records import NodeId, Outcome, parse_json
from network.core.roster import load_roster
from network.node.tracking import identifier_tags
from network.samples import sample_body
from tests.conftest import NOW, make_node, sign_roster


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    keeper = generate_signing_key()
    nodes = {i: make_node(i) for i in ("FRA", "DEU")}
    roster = load_roster(sign_roster(keeper, nodes), keeper=keeper.verify_key(), now=NOW)
    storage = generate_storage_key()
    request = json.dumps(
        {
            "to": "DEU",
            "type": "preservation",
            "priority": "urgent",
            "body": sample_body("preservation"),
        }
    ).encode()

    def one(now: int) -> None:
        fields = parse_json(request, limit=1 << 20)
        assert isinstance(fields, dict)
        node, kind, urgency, typed = parse_request(
            fields["to"], fields["type"], fields["priority"], fields["body"]
        )
        envelope = seal(
            sender=NodeId("FRA"),
            recipient=node,
            message_type=kind,
            body=typed,
            priority=urgency,
            now=now,
            random_bytes=os.urandom(10),
            signing_key=nodes["FRA"].signing,
            recipient_key=roster.active_card("DEU").hpke_key,
        )
        identifier_tags(storage, typed)
        opened = open_envelope(
            verify_envelope(envelope.raw, roster=roster, now=now),
            me=NodeId("DEU"),
            hpke_key=nodes["DEU"].hpke,
            roster=roster,
        )
        identifier_tags(storage, opened.body)
        receipt = make_receipt(
            message_id=opened.header.id,
            message_sender=opened.header.sender,
            envelope_raw=envelope.raw,
            me=NodeId("DEU"),
            signing_key=nodes["DEU"].signing,
            now=now,
            random_bytes=os.urandom(10),
            outcome=Outcome.ACCEPTED,
        )
        check_receipt_for(verify_receipt(receipt.raw, roster=roster, now=now), envelope)

    one(NOW)  # the first message fills the caches of compiled converters
    started = time.perf_counter()
    for index in range(count):
        one(NOW + index)
    print(f"{count} messages: {(time.perf_counter() - started) / count * 1e6:.0f} us a message")


if __name__ == "__main__":
    main()
