"""Fuzzing the parsers that meet untrusted input: nothing escapes but the project's own errors.

Each property hands a parser bytes (or TOML text) drawn by hypothesis: random
bytes, and structured mutations of a valid document (a byte flipped, a slice
cut or inserted, a field dropped, a value of the wrong type, an unknown field),
re-signed with the right key where that lets the input past the signature to
the checks behind it. The parser may accept or refuse; it must never raise
anything but a `CpnError`, the typed refusal the node audits.

`PROPERTIES` is shared with bench/fuzz.py, which runs the same properties with
a much larger budget (`python bench/fuzz.py --examples 20000`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from network.core.crypto import HpkeSuite, SigningKey, generate_signing_key
from network.core.envelope import (
    _INNER,
    _OUTER,
    _seal_info,
    make_receipt,
    open_envelope,
    seal,
    verify_envelope,
    verify_receipt,
)
from network.core.errors import CpnError
from network.core.protocol import (
    FRAME_CHECKPOINT,
    FRAME_COSIGNATURE,
    FRAME_ENVELOPE,
    LinkHandshake,
    Role,
    parse_checkpoint_offer,
    parse_witness_answer,
    split_envelope,
    split_frame,
)
from network.core.records import MessageType, NodeId, Outcome, Priority, b64encode
from network.core.roster import ROSTER_CONTEXT, Roster, load_roster
from network.core.routing import make_announcement, verify_announcement
from network.node.config import load_config
from network.samples import sample_body
from tests.conftest import NOW, Node, make_node, sign_roster

# The suite's budget: all properties together in well under 20 s on a loaded 2-core machine.
SUITE_EXAMPLES = 150


# -- a small world of valid documents to mutate ------------------------------------------


@dataclass(frozen=True)
class World:
    keeper: SigningKey
    nodes: dict[str, Node]
    roster: Roster

    def fra_to_deu(self, message_type: str = "emergency") -> bytes:
        return seal(
            sender=NodeId("FRA"),
            recipient=NodeId("DEU"),
            message_type=MessageType(message_type),
            body=sample_body(message_type),
            priority=Priority.FLASH,
            now=NOW,
            random_bytes=os.urandom(10),
            signing_key=self.nodes["FRA"].signing,
            recipient_key=self.roster.active_card("DEU").hpke_key,
        ).raw


@functools.cache
def world() -> World:
    """FRA, DEU and USA (X25519, the fast suite) under a keeper; made once per process."""
    keeper = generate_signing_key()
    nodes = {i: make_node(i, HpkeSuite.X25519) for i in ("FRA", "DEU", "USA")}
    roster = load_roster(sign_roster(keeper, nodes), keeper=keeper.verify_key(), now=NOW)
    return World(keeper, nodes, roster)


def encode(value: Any) -> bytes:
    """Sorted compact JSON, like canonical, but for any value a mutation made (floats too)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# -- mutations -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40).map(b64encode),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


# Nesting depths around the limits of the parsers (orjson: 255 to write, 1024 to read)
# and of Python's stack (1000 frames, less what the caller already holds).
DEPTHS = st.sampled_from([64, 255, 256, 1024, 1025, 5000]) | st.integers(800, 1030)


def mutate_bytes(data: st.DataObject, raw: bytes) -> bytes:
    """One byte-level change: flip, cut, delete a slice, insert, or replace it all."""
    action = data.draw(st.sampled_from(["flip", "cut", "delete", "insert", "nest", "random"]))
    index = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    if action == "flip" and raw:
        value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[index]))
        return raw[:index] + bytes([value]) + raw[index + 1 :]
    if action == "cut":
        return raw[:index]
    if action == "delete":
        return raw[:index] + raw[index + data.draw(st.integers(1, 64)) :]
    if action == "insert":
        return raw[:index] + data.draw(st.binary(min_size=1, max_size=64)) + raw[index:]
    if action == "nest":  # deep nesting, as a stack-exhaustion attack would send it
        depth = data.draw(DEPTHS)
        return b"[" * depth + raw + b"]" * depth
    return data.draw(st.binary(max_size=2 * len(raw)))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def mutate_json(data: st.DataObject, value: Any) -> Any:
    """One structural change somewhere in a JSON value: drop, retype, add a field, nest deep."""
    value = orjson.loads(orjson.dumps(value))  # a copy to change
    path = data.draw(st.sampled_from(_paths(value)))
    action = data.draw(st.sampled_from(["drop", "replace", "add", "deep"]))
    if not path:
        return data.draw(json_values)
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "drop":
        del parent[last]
    elif action == "replace":
        parent[last] = data.draw(json_values)
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][data.draw(st.text(max_size=8))] = data.draw(json_values)
    elif action == "deep":
        depth = data.draw(st.integers(1, 200))  # the encoder stops at 255; deeper: `nest`
        nested: Any = parent[last]
        for _ in range(depth):
            nested = [nested]
        parent[last] = nested
    return value


def mutated_document(
    data: st.DataObject, raw: bytes, resign: Callable[[dict[str, Any]], None] | None = None
) -> bytes:
    """Random bytes, a byte-level change, or a structural change (re-signed when it can be)."""
    how = data.draw(st.sampled_from(["random", "bytes", "json"]))
    if how == "random":
        return data.draw(st.binary(max_size=4096))
    if how == "bytes":
        return mutate_bytes(data, raw)
    doc = mutate_json(data, orjson.loads(raw))
    if resign is not None and isinstance(doc, dict) and data.draw(st.booleans()):
        with contextlib.suppress(orjson.JSONEncodeError):  # too deep to encode: old signature
            resign(doc)
    try:
        return encode(doc)
    except orjson.JSONEncodeError:  # beyond what the encoder writes: change the bytes instead
        return mutate_bytes(data, raw)


def _resign(part: str, context: bytes, key: SigningKey) -> Callable[[dict[str, Any]], None]:
    def resign(doc: dict[str, Any]) -> None:
        if part in doc:
            doc["sig"] = b64encode(key.sign(context + encode(doc[part])))

    return resign


# Frames a node holds below a parser (event loop, websockets, the link, the use case).
NODE_STACK = 60


def refuses_only_with_cpn_errors(parse: Callable[[], object]) -> None:
    """The property itself: accept, or refuse with a CpnError; anything else fails the test.

    The parser runs under Python's default recursion limit as a node has it:
    hypothesis raises the limit while it runs a test, which would hide a
    parser that a deeply nested document drives past the stack.
    """
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 1000 - NODE_STACK)
    try:
        parse()
    except CpnError:
        pass
    finally:
        sys.setrecursionlimit(limit)


# -- the properties --------------------------------------------------------------------


def frames(data: st.DataObject) -> None:
    """Any bytes (or text) as a link frame, and the payloads of E, C and K frames."""
    kind = data.draw(st.sampled_from([b"", b"E", b"C", b"K", b"H", b"A", b"R", b"N", b"S", b"Z"]))
    message: bytes | str = kind + data.draw(st.binary(max_size=512))
    if data.draw(st.booleans()):
        message = data.draw(st.text(max_size=64))

    def parse() -> None:
        kind, payload = split_frame(message)
        if kind == FRAME_ENVELOPE:
            split_envelope(payload)
        elif kind == FRAME_CHECKPOINT:
            parse_checkpoint_offer(payload)
        elif kind == FRAME_COSIGNATURE:
            parse_witness_answer(payload)

    refuses_only_with_cpn_errors(parse)


def _handshake(role: Role, me: str, peer: str, expected: str | None) -> LinkHandshake:
    w = world()
    return LinkHandshake(
        role=role,
        me=NodeId(me),
        signing_key=w.nodes[me].signing,
        roster=w.roster,
        my_cert_sha256=w.roster.active_card(me).tls_sha256,
        peer_cert_sha256=w.roster.active_card(peer).tls_sha256,
        nonce=os.urandom(32),
        expected_peer=NodeId(expected) if expected else None,
    )


def handshake(data: st.DataObject) -> None:
    """A server, then a client, fed a valid handshake with one of its frames changed."""
    client = _handshake(Role.CLIENT, "FRA", "DEU", "DEU")
    server = _handshake(Role.SERVER, "DEU", "FRA", None)
    hello = client.start()[0]
    server_hello = server.receive(hello)[0]
    auth = client.receive(server_hello)[0]
    target = data.draw(st.sampled_from(["client hello", "client auth", "server hello"]))

    def change(frame: bytes) -> bytes:
        return frame[:1] + mutated_document(data, frame[1:])

    def parse() -> None:
        if target == "client hello":
            fresh = _handshake(Role.SERVER, "DEU", "FRA", None)
            fresh.receive(change(hello))
        elif target == "client auth":
            server.receive(change(auth))
        else:
            fresh_client = _handshake(Role.CLIENT, "FRA", "DEU", "DEU")
            fresh_client.start()
            fresh_client.receive(change(server_hello))

    refuses_only_with_cpn_errors(parse)


def envelope(data: st.DataObject) -> None:
    """An envelope, changed (outer signature renewed or not), verified and opened by DEU."""
    w = world()
    raw = w.fra_to_deu()
    changed = mutated_document(data, raw, _resign_outer(w.nodes["FRA"].signing))

    def parse() -> None:
        checked = verify_envelope(changed, roster=w.roster, now=NOW)
        open_envelope(checked, me=NodeId("DEU"), hpke_key=w.nodes["DEU"].hpke, roster=w.roster)

    refuses_only_with_cpn_errors(parse)


def _resign_outer(key: SigningKey) -> Callable[[dict[str, Any]], None]:
    def resign(doc: dict[str, Any]) -> None:
        if "header" in doc and "sealed" in doc:
            signed = encode({"header": doc["header"], "sealed": doc["sealed"]})
            doc["sig"] = b64encode(key.sign(_OUTER + signed))

    return resign


def sealed_body(data: st.DataObject) -> None:
    """A body changed before sealing, signed inside and out by FRA: DEU opens and types it."""
    w = world()
    message_type = data.draw(st.sampled_from([t.value for t in MessageType]))
    valid = orjson.loads(w.fra_to_deu(message_type))
    body = mutate_json(data, sample_body(message_type))
    type_name = data.draw(st.sampled_from([message_type, "nonsense"]))
    header_bytes = encode(valid["header"])
    try:
        inner = encode({"body": body, "header": valid["header"], "type": type_name})
        sig = b64encode(w.nodes["FRA"].signing.sign(_INNER + inner))
        plaintext = encode({"body": body, "sig": sig, "type": type_name})
    except orjson.JSONEncodeError:
        return  # a body our encoder cannot write cannot be sealed either
    card = w.roster.active_card("DEU")
    sealed = b64encode(card.hpke_key.seal(plaintext, _seal_info(header_bytes, card.hpke_key.kid)))
    doc = {"header": valid["header"], "sealed": sealed}
    doc["sig"] = b64encode(w.nodes["FRA"].signing.sign(_OUTER + encode(doc)))

    def parse() -> None:
        checked = verify_envelope(encode(doc), roster=w.roster, now=NOW)
        open_envelope(checked, me=NodeId("DEU"), hpke_key=w.nodes["DEU"].hpke, roster=w.roster)

    refuses_only_with_cpn_errors(parse)


def receipt(data: st.DataObject) -> None:
    """DEU's receipt for an envelope, changed (re-signed or not), verified by FRA."""
    w = world()
    raw = w.fra_to_deu()
    outcome = data.draw(st.sampled_from(list(Outcome)))
    valid = make_receipt(
        message_id=orjson.loads(raw)["header"]["id"],
        message_sender=NodeId("FRA"),
        envelope_raw=raw,
        me=NodeId("DEU"),
        signing_key=w.nodes["DEU"].signing,
        now=NOW,
        random_bytes=os.urandom(10),
        outcome=outcome,
        reason="bad_signature" if outcome is Outcome.REJECTED else None,
    )
    resign = _resign("receipt", b"cpn/v1 receipt\n", w.nodes["DEU"].signing)
    changed = mutated_document(data, valid.raw, resign)
    refuses_only_with_cpn_errors(lambda: verify_receipt(changed, roster=w.roster, now=NOW))


def roster(data: st.DataObject) -> None:
    """The signed roster, changed (re-signed by the keeper or not), loaded over the held one."""
    w = world()
    resign = _resign("roster", ROSTER_CONTEXT, w.keeper)
    changed = mutated_document(data, w.roster.raw, resign)
    held = w.roster if data.draw(st.booleans()) else None
    refuses_only_with_cpn_errors(
        lambda: load_roster(changed, keeper=w.keeper.verify_key(), now=NOW, held=held)
    )


def announcement(data: st.DataObject) -> None:
    """USA's link announcement, changed (re-signed or not), verified."""
    w = world()
    valid = make_announcement(NodeId("USA"), 7, [NodeId("FRA")], w.nodes["USA"].signing)
    resign = _resign("announce", b"cpn/v1 announce\n", w.nodes["USA"].signing)
    changed = mutated_document(data, valid.raw, resign)
    refuses_only_with_cpn_errors(lambda: verify_announcement(changed, w.roster))


# -- the node config, as TOML text --------------------------------------------------------

_VALID_CONFIG: dict[str, Any] = {
    "id": "FRA",
    "peer": {"listen": "127.0.0.1:7101"},
    "api": {"listen": "127.0.0.1:8101"},
    "store": {"path": "../var/FRA.sqlite"},
    "keys": {
        "dir": "../keys/FRA",
        "roster": "../keys/roster.json",
        "keeper": "../keys/authority/keeper.json",
    },
    "links": {"peers": ["DEU", "USA"]},
    "delivery": {"retry_seconds": 60},
    "deadlines": {"preservation_warning": "10d", "flash": {"receipt": "5m", "repeat": 300}},
    "alerts": {"webhook": "https://alerts.example/cpn", "webhook_timeout": 10},
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '""'


def _toml_key(key: str) -> str:
    return orjson.dumps(key).decode()


def to_toml(doc: Any) -> str:
    """TOML text for a document: top-level values first, then one [table] per table."""
    if not isinstance(doc, dict):
        return f"value = {_toml_value(doc)}\n"
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@functools.cache
def _config_dir() -> Path:
    """One folder for the generated configs of the run, removed at its end."""
    path = Path(tempfile.mkdtemp(prefix="cpn-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def config(data: st.DataObject) -> None:
    """A node config: generated TOML from a changed valid config, or changed TOML text."""
    how = data.draw(st.sampled_from(["structure", "text", "random"]))
    if how == "structure":
        text = to_toml(mutate_json(data, _VALID_CONFIG)).encode()
    elif how == "text":
        text = mutate_bytes(data, to_toml(_VALID_CONFIG).encode())
    else:
        text = data.draw(st.text(max_size=400)).encode("utf-8", "surrogatepass")
    path = _config_dir() / "node.toml"
    path.write_bytes(text)
    refuses_only_with_cpn_errors(lambda: load_config(path))


PROPERTIES: dict[str, Callable[[st.DataObject], None]] = {
    "frames": frames,
    "handshake": handshake,
    "envelope": envelope,
    "sealed_body": sealed_body,
    "receipt": receipt,
    "roster": roster,
    "announcement": announcement,
    "config": config,
}


def run(name: str, examples: int, *, seed: int | None = None) -> None:
    """Run one property on `examples` inputs; raises on the first escape, with its input.

    Without a seed the inputs are the same on every run (the suite's); with one,
    the sequence that seed gives (the long run in bench/fuzz.py).
    """
    budget = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    test = given(st.data())(PROPERTIES[name])
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    budget(test)()


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_only_typed_errors_escape(name: str) -> None:
    run(name, SUITE_EXAMPLES)
