"""Write the protocol's test vectors (tests/vectors/*.json) from fixed keys and inputs.

`make vectors` runs this. Everything is derived from the fixed seeds, times and random
bytes below, except what the libraries draw themselves and cannot be given: the HPKE
sender's ephemeral key (so `sealed`) and the TLS certificates' keys and serials. Those
are read back from the files already written when they still fit, so that running this
again changes a file only when the wire changes. tests/test_vectors.py checks the
implementation against the files, never against itself.

Binary values are base64url without padding (as on the wire) unless the key ends in
`_hex`; texts that are signed or hashed (canonical JSON with its context prefix) are
given as UTF-8 strings, exactly.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from network.core.auditlog import dated_checkpoint, entry_bytes, witness_name
from network.core.bodies import BODY_TYPES, json_schemas
from network.core.crypto import (
    HpkeSuite,
    generate_tls_identity,
    hpke_key_from_seeds,
    sha256,
    signing_key_from_seed,
)
from network.core.envelope import (
    ReceiptScope,
    check_receipt_matches,
    make_receipt,
    open_envelope,
    seal,
    verify_envelope,
    verify_receipt,
)
from network.core.errors import CpnError
from network.core.protocol import (
    FRAME_ENVELOPE,
    FRAME_LIMITS,
    LINK_VERSIONS,
    LinkHandshake,
    Role,
    envelope_frame,
)
from network.core.records import (
    MessageType,
    NodeId,
    Outcome,
    Priority,
    b64decode,
    b64encode,
    canonical,
    new_message_id,
    parse_canonical,
)
from network.core.roster import Card, build_roster, load_roster
from network.core.routing import make_announcement, verify_announcement
from network.core.tlog import (
    consistency_proof,
    cosign,
    cosignature_message,
    inclusion_proof,
    leaf_hash,
    open_checkpoint,
    root_hash,
    sign_note,
    verify_consistency,
    verify_cosignature,
    verify_inclusion,
)
from network.samples import sample_body

HERE = Path(__file__).parent
NOW = 1_796_000_000_000  # 2026-11-30T01:33:20Z: every vector's "now"


def seed(label: str, size: int = 32) -> bytes:
    """Fixed key material: SHA-256 of a label, as long as needed."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"cpn test vector {label} {counter}".encode()).digest()
        counter += 1
    return out[:size]


SIGNING_SEEDS = {n: seed(f"{n} signing") for n in ("FRA", "DEU", "USA", "keeper")}
HPKE_SEEDS = {n: (seed(f"{n} x25519"), seed(f"{n} mlkem768", 64)) for n in ("FRA", "DEU", "USA")}


def signing(name: str) -> Any:
    return signing_key_from_seed(SIGNING_SEEDS[name])


def hpke(name: str, suite: HpkeSuite) -> Any:
    x, m = HPKE_SEEDS[name]
    return hpke_key_from_seeds(suite, x, m if suite is HpkeSuite.MLKEM768_X25519 else None)


def previous(name: str) -> dict[str, Any]:
    path = HERE / name
    return json.loads(path.read_text()) if path.exists() else {}


def refusal(run: Any) -> str:
    """The reason a check refuses with (every refusal names one)."""
    try:
        run()
    except CpnError as exc:
        return exc.reason
    raise AssertionError("a negative vector was accepted")


# -- the pieces --------------------------------------------------------------------------


def canonical_vectors() -> dict[str, Any]:
    valid = [
        '{"b":1,"a":[true,false,null],"c":{"z":"","y":-9007199254740991}}',
        '{"é":"é","e":"\\u00e9","\\u20ac":"€"}',
        '{"text":"line\\nbreak \\"quoted\\" \\\\ \\u0001 \\u007f"}',
        '{"big":9007199254740991,"zero":0,"neg":-1}',
        '{"a":{"\\ud83d\\ude00":"emoji key sorts by UTF-16 code units","\\uffff":1}}',
    ]
    invalid = [
        ('{"a":1.5}', "floats are not allowed"),
        ('{"a":1e3}', "floats are not allowed"),
        ('{"a":9007199254740992}', "integer outside"),
        ('{"a":1,"a":2}', "duplicate key"),
        ('{"b":1,"a":2}', "not in canonical form"),
        ('{"a": 1}', "not in canonical form"),
        ('{"a":"\\u00e9"}', "not in canonical form"),
        ('{"a":NaN}', "not allowed"),
        ("[" * 70 + "]" * 70, "nested deeper"),
    ]
    return {
        "description": "RFC 8785 canonical JSON, restricted: no floats, integers within"
        " ±(2^53-1), no duplicate keys, at most 64 levels; a document on the wire must be"
        " byte for byte its own canonical form.",
        "valid": [
            {"input": text, "canonical": canonical(json.loads(text)).decode()} for text in valid
        ],
        "invalid": [
            {
                "input": text,
                "reason": refusal(lambda t=text: parse_canonical(t.encode(), limit=1 << 20)),
                "error_contains": why,
            }
            for text, why in invalid
        ],
    }


def id_vectors() -> dict[str, Any]:
    cases = [(NOW, seed("id 1", 10)), (0, bytes(10)), (2**48 - 1, b"\xff" * 10)]
    return {
        "description": "Message ids: UUIDv7 (RFC 9562 §5.7) from a millisecond time and 10"
        " random bytes: rand_a = the first 12 bits, rand_b = the last 62 bits.",
        "valid": [
            {"unix_ms": ms, "random_hex": r.hex(), "id": new_message_id(ms, r)} for ms, r in cases
        ],
        "invalid": [
            "0193c1e8-8a4b-4c2d-9e1f-0a1b2c3d4e5f",  # version 4
            "0193C1E8-8A4B-7C2D-9E1F-0A1B2C3D4E5F",  # upper case
            "0193c1e8-8a4b-7c2d-7e1f-0a1b2c3d4e5f",  # variant 0
            "0193c1e88a4b7c2d9e1f0a1b2c3d4e5f",  # no dashes
            "=hyperlink(0193c1e8-8a4b-7c2d-9e1f-0a1b2c3d4e5f)",
        ],
    }


def key_vectors() -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for name in SIGNING_SEEDS:
        key = signing(name)
        keys[f"{name} signing"] = {
            "ed25519_seed": b64encode(SIGNING_SEEDS[name]),
            "public": b64encode(key.public_raw),
            "kid": key.kid,
        }
    for name in HPKE_SEEDS:
        for suite in HpkeSuite:
            key = hpke(name, suite)
            x, m = HPKE_SEEDS[name]
            item = {"suite": str(suite), "x25519_private": b64encode(x)}
            if suite is HpkeSuite.MLKEM768_X25519:
                item["mlkem768_seed"] = b64encode(m)
            item.update(public=b64encode(key.public.public_raw), kid=key.public.kid)
            keys[f"{name} hpke {suite}"] = item
    return {
        "description": "Keys from fixed seeds. kid = base64url(SHA-256(public key bytes)[:12]);"
        " an Ed25519 public key is its 32 bytes (RFC 8032); an X25519 HPKE key its 32 bytes;"
        " the hybrid key ML-KEM-768 encapsulation key (1,184 bytes, FIPS 203) ‖ X25519 (32).",
        "keys": keys,
    }


def envelope_vectors(old: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    body = sample_body("emergency")  # the fixed sample (network/samples.py)
    cases: dict[str, Any] = {}
    raws: dict[str, bytes] = {}
    fra = signing("FRA")
    for suite in HpkeSuite:
        recipient = hpke("DEU", suite)
        random_bytes = seed(f"envelope {suite}", 10)
        made = seal(
            sender=NodeId("FRA"),
            recipient=NodeId("DEU"),
            message_type=MessageType.EMERGENCY,
            body=body,
            priority=Priority.FLASH,
            now=NOW,
            random_bytes=random_bytes,
            signing_key=fra,
            recipient_key=recipient.public,
            ttl_ms=3_600_000,
        )
        header = made.header.encoded()
        assert made.plaintext is not None
        info = b"cpn/v1 seal\n" + b"1\n" + made.header.rkid.encode() + b"\n" + sha256(header)
        before = old.get("cases", {}).get(str(suite), {})
        sealed = made.sealed
        if "sealed" in before:  # the recorded HPKE output, while it still opens the same
            recorded = b64decode(before["sealed"])
            try:
                if recipient.open(recorded, info) == made.plaintext:
                    sealed = recorded
            except CpnError:
                pass
        sealed_text = b64encode(sealed)
        enc_length = 1088 + 32 if suite is HpkeSuite.MLKEM768_X25519 else 32  # FIPS 203 ct ‖ X25519
        outer_input = b"cpn/v1 outer\n" + canonical(
            {"header": json.loads(header), "sealed": sealed_text}
        )
        outer_sig = fra.sign(outer_input)
        raw = canonical(
            {"header": json.loads(header), "sealed": sealed_text, "sig": b64encode(outer_sig)}
        )
        plain = json.loads(made.plaintext)
        inner_input = b"cpn/v1 inner\n" + canonical(
            {"body": plain["body"], "header": json.loads(header), "type": plain["type"]}
        )
        cases[str(suite)] = {
            "inputs": {
                "sender": "FRA",
                "sender_signing_seed": b64encode(SIGNING_SEEDS["FRA"]),
                "recipient": "DEU",
                "recipient_hpke": f"DEU hpke {suite}",
                "type": "emergency",
                "priority": "flash",
                "body": body,
                "now": NOW,
                "ttl_ms": 3_600_000,
                "hop_limit": 8,
                "id_random_hex": random_bytes.hex(),
            },
            "header": header.decode(),
            "inner_signature_input": inner_input.decode(),
            "inner_signature": plain["sig"],
            "plaintext": made.plaintext.decode(),
            "hpke_suite": str(suite),
            "hpke_info": b64encode(info),
            "hpke_aad": "",
            "hpke_enc_length": enc_length,
            "hpke_enc": b64encode(sealed[:enc_length]),
            "hpke_ciphertext": b64encode(sealed[enc_length:]),
            "sealed": sealed_text,
            "outer_signature_input": outer_input.decode(),
            "outer_signature": b64encode(outer_sig),
            "envelope": raw.decode(),
            "digest": b64encode(sha256(raw)),
        }
        raws[str(suite)] = raw
    return {
        "description": "One envelope per HPKE suite, FRA to DEU, with every intermediate"
        " value. `sealed` = HPKE enc ‖ ciphertext (base mode, single shot, aad empty); its"
        " ephemeral key was drawn by the library, so a re-implementation checks it by"
        " opening it with DEU's key and `hpke_info`, not by sealing again.",
        "now": NOW,
        "cases": cases,
    }, raws


def negative_envelopes(raw: bytes) -> list[dict[str, Any]]:
    """Each refusal a relay (`check: relay`) or the recipient (`check: recipient`) makes."""
    roster = ROSTER
    doc = json.loads(raw)
    usa = signing("USA")

    def resign(changed: dict[str, Any], key: Any = None) -> bytes:
        key = key or signing("FRA")
        signed = canonical({"header": changed["header"], "sealed": changed["sealed"]})
        return canonical({**changed, "sig": b64encode(key.sign(b"cpn/v1 outer\n" + signed))})

    def header(**fields: Any) -> dict[str, Any]:
        return {**doc, "header": {**doc["header"], **fields}}

    sealed = doc["sealed"]
    flipped = sealed[:60] + ("A" if sealed[60] != "A" else "B") + sealed[61:]
    cases = [
        ("outer signature by another key", canonical({**doc, "sig": b64encode(usa.sign(b"x"))})),
        ("a header field changed after signing", canonical(header(priority="routine"))),
        ("not canonical: a space", raw.replace(b'{"header":', b'{ "header":', 1)),
        ("protocol version 2", resign(header(v=2))),
        ("unknown HPKE suite", resign(header(suite="P256/HKDF-SHA256/AES-128-GCM"))),
        ("sender not in the roster", resign(header(**{"from": "CHE"}))),
        ("id not a UUIDv7", resign(header(id="0193c1e8-8a4b-4c2d-9e1f-0a1b2c3d4e5f"))),
        ("expires before created", resign(header(expires=doc["header"]["created"] - 1))),
        ("hop_limit 0", resign(header(hop_limit=0))),
        ("an unknown field", resign({**doc, "extra": 1})),
        ("created too far ahead (skew)", resign(header(created=NOW + 600_000))),
        ("expired", resign(header(expires=NOW - 1, created=NOW - 10_000))),
        ("sealed changed and re-signed", resign({**doc, "sealed": flipped})),
        ("for another recipient key", resign(header(rkid="AAAAAAAAAAAAAAAA"))),
    ]
    deu_keys = {str(s): hpke("DEU", s) for s in HpkeSuite}
    key = deu_keys[doc["header"]["suite"]]
    out = []
    for description, bad in cases:

        def relay(b: bytes = bad) -> None:
            verify_envelope(b, roster=roster, now=NOW)

        def recipient(b: bytes = bad) -> None:
            open_envelope(
                verify_envelope(b, roster=roster, now=NOW),
                me=NodeId("DEU"),
                hpke_key=key,
                roster=roster,
            )

        try:
            relay()
            check, reason = "recipient", refusal(recipient)
        except CpnError as exc:
            check, reason = "relay", exc.reason
        out.append(
            {
                "description": description,
                "envelope": b64encode(bad),
                "now": NOW,
                "check": check,
                "reason": reason,
            }
        )
    return out


def receipt_vectors(raw: bytes) -> dict[str, Any]:
    deu = signing("DEU")
    header = json.loads(raw)["header"]
    cases = []
    for outcome, reason, scope in [
        (Outcome.ACCEPTED, None, ReceiptScope.END_TO_END),
        (Outcome.DUPLICATE, None, ReceiptScope.END_TO_END),
        (Outcome.REJECTED, "decrypt_failed", ReceiptScope.END_TO_END),
        (Outcome.ACCEPTED, None, ReceiptScope.HOP),
    ]:
        random_bytes = seed(f"receipt {outcome} {scope}", 10)
        receipt = make_receipt(
            message_id=header["id"],
            message_sender=NodeId("FRA"),
            envelope_raw=raw,
            me=NodeId("DEU"),
            signing_key=deu,
            now=NOW + 40,
            random_bytes=random_bytes,
            outcome=outcome,
            reason=reason,
            scope=scope,
            path=(NodeId("USA"),) if scope is ReceiptScope.END_TO_END else (),
        )
        statement = canonical(receipt.to_json())
        cases.append(
            {
                "outcome": str(outcome),
                "reason": reason,
                "scope": str(scope),
                "id_random_hex": random_bytes.hex(),
                "received": NOW + 40,
                "statement": statement.decode(),
                "signature_input": (b"cpn/v1 receipt\n" + statement).decode(),
                "signature": b64encode(receipt.signature),
                "receipt": receipt.raw.decode(),
            }
        )
    accepted = cases[0]["receipt"].encode()
    doc = json.loads(accepted)

    def resigned(statement: dict[str, Any], key: Any = deu) -> bytes:
        signature = key.sign(b"cpn/v1 receipt\n" + canonical(statement))
        return canonical({"receipt": statement, "sig": b64encode(signature)})

    other_digest = b64encode(sha256(b"other bytes"))
    bad = [
        ("signed by another key", resigned(doc["receipt"], signing("USA")), "verify"),
        (
            "rejected without a reason",
            resigned({**doc["receipt"], "outcome": "rejected"}),
            "verify",
        ),
        ("time far ahead", resigned({**doc["receipt"], "received": NOW + 3_600_000}), "verify"),
        ("for other bytes", resigned({**doc["receipt"], "digest": other_digest}), "match"),
        (
            "signed by a node that is not the recipient",
            resigned({**doc["receipt"], "from": "USA", "kid": signing("USA").kid}, signing("USA")),
            "match",
        ),
    ]
    negative = []
    for description, raw_receipt, check in bad:

        def verify(b: bytes = raw_receipt) -> Any:
            return verify_receipt(b, roster=ROSTER, now=NOW)

        def match(b: bytes = raw_receipt) -> None:
            check_receipt_matches(
                verify(b),
                message_id=header["id"],
                sender="FRA",
                recipient="DEU",
                digest=sha256(raw),
            )

        negative.append(
            {
                "description": description,
                "receipt": raw_receipt.decode(),
                "check": check,
                "reason": refusal(verify if check == "verify" else match),
            }
        )
    return {
        "negative": negative,
        "description": "Receipts signed by DEU for the hybrid (ML-KEM-768+X25519) envelope"
        " of envelope.json (digest = SHA-256 of its exact bytes). `path` lists the relays"
        " the message came through, as the recipient saw them.",
        "envelope_digest": b64encode(sha256(raw)),
        "cases": cases,
    }


def handshake_vectors() -> dict[str, Any]:
    client_nonce, server_nonce = seed("client nonce"), seed("server nonce")
    certs = {n: sha256(CARDS[n].tls_cert) for n in ("FRA", "DEU")}

    def side(role: Role, me: str, peer: str, nonce: bytes) -> LinkHandshake:
        return LinkHandshake(
            role=role,
            me=NodeId(me),
            signing_key=signing(me),
            roster=ROSTER,
            my_cert_sha256=certs[me],
            peer_cert_sha256=certs[peer],
            nonce=nonce,
            expected_peer=NodeId(peer) if role is Role.CLIENT else None,
        )

    client = side(Role.CLIENT, "FRA", "DEU", client_nonce)
    server = side(Role.SERVER, "DEU", "FRA", server_nonce)
    frames: list[tuple[str, bytes]] = []
    for out in client.start():
        frames.append(("client", out))
    queue = [("server", frames[0][1])]
    while queue:
        to, data = queue.pop(0)
        answers = (server if to == "server" else client).receive(data)
        for answer in answers:
            sender = to
            frames.append((sender, answer))
            queue.append(("client" if sender == "server" else "server", answer))
    assert client.done and server.done
    transcript = {
        "purpose": "cpn/v1 link",
        "v": max(LINK_VERSIONS),
        "client": "FRA",
        "server": "DEU",
        "client_nonce": b64encode(client_nonce),
        "server_nonce": b64encode(server_nonce),
        "client_cert": b64encode(certs["FRA"]),
        "server_cert": b64encode(certs["DEU"]),
    }

    def refused_hello(**changes: Any) -> dict[str, Any]:
        hello = {
            "v": 1,
            "node": "FRA",
            "to": "DEU",
            "nonce": b64encode(client_nonce),
            "roster": ROSTER.version,
            **changes,
        }
        frame = b"H" + canonical(hello)
        server = side(Role.SERVER, "DEU", "FRA", server_nonce)
        return {"frame": frame.decode(), "reason": refusal(lambda: server.receive(frame))}

    negative = {
        "hello for another node": refused_hello(to="USA"),
        "hello of version 0": refused_hello(v=0),
        "our own nonce reflected": refused_hello(nonce=b64encode(server_nonce)),
        "a nonce of 16 bytes": refused_hello(nonce=b64encode(client_nonce[:16])),
        "a node the roster does not hold": refused_hello(node="CHE"),
        "a node whose certificate is not the one seen in TLS": refused_hello(node="USA"),
    }
    later = b"H" + canonical(
        {
            "v": max(LINK_VERSIONS) + 1,
            "node": "FRA",
            "to": "DEU",
            "nonce": b64encode(client_nonce),
            "roster": ROSTER.version,
            "features": ["a later version's field this one does not know"],
        }
    )
    answer = side(Role.SERVER, "DEU", "FRA", server_nonce).receive(later)[0]
    return {
        "later_version": {
            "description": f"A client offering version {max(LINK_VERSIONS) + 1} (with a field"
            f" version {max(LINK_VERSIONS)} does not know) is answered with version"
            f" {max(LINK_VERSIONS)}: the link speaks the lower of the two.",
            "client_hello": later.decode(),
            "server_hello": answer.decode(),
        },
        "negative_hellos_to_server": negative,
        "description": "The signed link handshake after TLS 1.3: FRA dials DEU. Each frame is"
        " one binary WebSocket message: a kind letter, then canonical JSON. The client's hello"
        " offers the highest version it speaks, the server's hello names the version the link"
        " speaks (the lower of the two), and the transcript carries it. Each side signs"
        ' "cpn/v1 link <its role>\\n" ‖ canonical(transcript) with its roster Ed25519 key.',
        "client": "FRA",
        "server": "DEU",
        "client_nonce": b64encode(client_nonce),
        "server_nonce": b64encode(server_nonce),
        "client_cert_sha256": b64encode(certs["FRA"]),
        "server_cert_sha256": b64encode(certs["DEU"]),
        "roster_version": ROSTER.version,
        "client_signature_input": (b"cpn/v1 link client\n" + canonical(transcript)).decode(),
        "server_signature_input": (b"cpn/v1 link server\n" + canonical(transcript)).decode(),
        "frames": [{"from": who, "frame": data.decode()} for who, data in frames],
    }


def frame_vectors() -> dict[str, Any]:
    path = (NodeId("USA"), NodeId("KEN"))
    envelope = b'{"header":...}'
    return {
        "description": "Link frames: one binary WebSocket message each, a kind letter then"
        " the payload; a payload over its kind's limit, a text message or an unknown kind"
        " cuts the link.",
        "limits": {kind.decode(): limit for kind, limit in sorted(FRAME_LIMITS.items())},
        "envelope_frame": {
            "path": list(path),
            "envelope": envelope.decode(),
            "frame_hex": envelope_frame(path, envelope).hex(),
        },
        "kind_envelope": FRAME_ENVELOPE.decode(),
    }


def roster_vectors(old: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": "A roster signed by the register keeper: the document is"
        ' canonical {"roster": body, "sig"}, the signature Ed25519 over'
        ' "cpn/v1 roster\\n" ‖ canonical(body). Cards list each contact point\'s keys and'
        " TLS certificate (DER, pinned by its SHA-256).",
        "keeper_seed": b64encode(SIGNING_SEEDS["keeper"]),
        "keeper_kid": signing("keeper").kid,
        "tls_certificates": {n: b64encode(c.tls_cert) for n, c in CARDS.items()},
        "body": json.dumps(json.loads(ROSTER_RAW)["roster"], ensure_ascii=False),
        "signature_input": (
            b"cpn/v1 roster\n" + canonical(json.loads(ROSTER_RAW)["roster"])
        ).decode(),
        "document": ROSTER_RAW.decode(),
        "now": NOW,
        "negative": roster_negatives(),
    }


def roster_negatives() -> list[dict[str, Any]]:
    keeper = signing("keeper")
    body = json.loads(ROSTER_RAW)["roster"]

    def signed(changed: dict[str, Any], key: Any = keeper) -> bytes:
        signature = key.sign(b"cpn/v1 roster\n" + canonical(changed))
        return canonical({"roster": changed, "sig": b64encode(signature)})

    older = signed({**body, "version": 2})
    cases = [
        ("signed by another key", signed(body, signing("FRA")), None),
        (
            "changed after signing",
            canonical(
                {
                    **json.loads(ROSTER_RAW),
                    "roster": {**body, "valid_until": body["valid_until"] + 1},
                }
            ),
            None,
        ),
        ("expired", signed({**body, "valid_until": NOW - 1, "issued": NOW - 10}), None),
        ("older than the one held", older, "held"),
        ("protocol version 2", signed({**body, "v": 2}), None),
    ]
    out = []
    for description, document, held in cases:
        out.append(
            {
                "description": description,
                "document": document.decode(),
                "held_version": ROSTER.version if held else None,
                "reason": refusal(
                    lambda d=document, h=held: load_roster(
                        d, keeper=keeper.verify_key(), now=NOW, held=ROSTER if h else None
                    )
                ),
            }
        )
    return out


def announcement_vectors() -> dict[str, Any]:
    made = make_announcement(NodeId("USA"), 7, [NodeId("FRA"), NodeId("DEU")], signing("USA"))
    body = canonical(json.loads(made.raw)["announce"])
    doc = json.loads(made.raw)
    forged = canonical({**doc, "sig": b64encode(signing("FRA").sign(b"cpn/v1 announce\n" + body))})
    unknown = {**doc["announce"], "node": "CHE"}
    stranger = canonical(
        {
            "announce": unknown,
            "sig": b64encode(signing("USA").sign(b"cpn/v1 announce\n" + canonical(unknown))),
        }
    )
    older = make_announcement(NodeId("USA"), 6, [NodeId("FRA")], signing("USA"))
    negative = [
        {
            "description": "signed by another node",
            "announcement": forged.decode(),
            "held_seq": None,
            "reason": refusal(lambda: verify_announcement(forged, ROSTER)),
        },
        {
            "description": "a node the roster does not hold",
            "announcement": stranger.decode(),
            "held_seq": None,
            "reason": refusal(lambda: verify_announcement(stranger, ROSTER)),
        },
        {
            "description": "no newer than the one held (seq 7)",
            "announcement": older.raw.decode(),
            "held_seq": 7,
            "reason": refusal(
                lambda: verify_announcement(older.raw, ROSTER, {NodeId("USA"): made})
            ),
        },
    ]
    return {
        "negative": negative,
        "description": "USA announces its live links (seq 7): signed over"
        ' "cpn/v1 announce\\n" ‖ canonical(body); `links` sorted.',
        "signature_input": (b"cpn/v1 announce\n" + body).decode(),
        "announcement": made.raw.decode(),
    }


def audit_vectors() -> dict[str, Any]:
    entries = [
        (NOW, "officer:olivia", "composed", "0193c1e8-8a4b-7c2d-9e1f-0a1b2c3d4e5f", {"to": "DEU"}),
        (NOW + 1, "node:DEU", "receipt_received", None, {"outcome": "accepted", "é": "ü"}),
        (NOW + 2, "node:FRA", "checkpoint", None, {}),
    ]
    leaves = []
    items = []
    for time, actor, action, message, detail in entries:
        data = entry_bytes(time, actor, action, message, detail)
        leaves.append(leaf_hash(data))
        items.append(
            {
                "time": time,
                "actor": actor,
                "action": action,
                "message": message,
                "detail": detail,
                "entry": data.decode(),
                "leaf_hash": b64encode(leaves[-1]),
            }
        )
    root = root_hash(leaves)
    checkpoint = dated_checkpoint("cpn/audit/FRA", len(leaves), root, NOW + 3)
    note = sign_note(checkpoint.to_text(), "cpn/audit/FRA", signing("FRA"))
    time_seconds = (NOW + 5_000) // 1000
    line = cosign(checkpoint, witness_name("DEU"), signing("DEU"), time_seconds)
    proofs = {
        "inclusion": {
            "index": 1,
            "tree_size": len(leaves),
            "proof": [b64encode(h) for h in inclusion_proof(leaves, 1, len(leaves))],
        },
        "consistency": {
            "old_size": 2,
            "old_root": b64encode(root_hash(leaves[:2])),
            "new_size": len(leaves),
            "proof": [b64encode(h) for h in consistency_proof(leaves, 2, len(leaves))],
        },
    }
    wrong = [b64encode(b"\x00" * 32)]
    negative = {
        "inclusion proof for another index": refusal(
            lambda: verify_inclusion(leaves[1], 0, len(leaves), inclusion_proof(leaves, 1, 3), root)
        ),
        "consistency proof with a hash changed": refusal(
            lambda: verify_consistency(2, 3, root_hash(leaves[:2]), root, [b64decode(wrong[0])])
        ),
        "checkpoint signed by another key": refusal(
            lambda: open_checkpoint(
                sign_note(checkpoint.to_text(), "cpn/audit/FRA", signing("USA")),
                "cpn/audit/FRA",
                {"cpn/audit/FRA": signing("FRA").verify_key()},
            )
        ),
        "cosignature by another witness key": refusal(
            lambda: verify_cosignature(
                note + line, witness_name("DEU"), signing("USA").verify_key()
            )
        ),
    }
    return {
        "proofs": proofs,
        "negative": negative,
        "description": "Audit entries as RFC 9162 leaves (SHA-256(0x00 ‖ canonical entry)),"
        " the tree's root, FRA's checkpoint (C2SP tlog-checkpoint, with a `time <ms>`"
        " extension line) as a signed note, and DEU's cosignature (C2SP tlog-cosignature).",
        "entries": items,
        "root": b64encode(root),
        "checkpoint": checkpoint.to_text(),
        "signed_note": note,
        "cosignature_time": time_seconds,
        "cosignature_message": cosignature_message(checkpoint.to_text(), time_seconds).decode(),
        "cosignature_line": line,
    }


# -- the roster every vector uses ----------------------------------------------------------


def cards(old: dict[str, Any]) -> dict[str, Card]:
    recorded = old.get("tls_certificates", {})
    made = {}
    for i, name in enumerate(("DEU", "FRA", "USA")):
        der = b64decode(recorded[name]) if name in recorded else None
        if der is None:
            now = datetime.datetime.fromtimestamp(NOW / 1000, datetime.UTC)
            der = generate_tls_identity(name, now=now, days=3650)[2]
        made[name] = Card(
            id=NodeId(name),
            name=f"{name} 24/7 point of contact",
            url=f"wss://{name.lower()}.cpn.invalid:{8100 + i}",
            signing_key=signing(name).verify_key(),
            hpke_key=hpke(
                name, HpkeSuite.X25519 if name == "FRA" else HpkeSuite.MLKEM768_X25519
            ).public,
            tls_cert=der,
        )
    # DEU takes both suites in the envelope vectors: its card lists the hybrid key.
    return made


CARDS: dict[str, Card] = {}
ROSTER_RAW = b""
ROSTER: Any = None


def write(name: str, value: dict[str, Any]) -> bool:
    path = HERE / name
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def main() -> int:
    global CARDS, ROSTER_RAW, ROSTER
    old_roster = previous("roster.json")
    CARDS = cards(old_roster)
    keeper = signing("keeper")
    ROSTER_RAW = build_roster(
        CARDS.values(),
        keeper=keeper,
        version=3,
        issued=NOW - 86_400_000,
        valid_until=NOW + 365 * 86_400_000,
    )
    ROSTER = load_roster(ROSTER_RAW, keeper=keeper.verify_key(), now=NOW)
    envelopes, raws = envelope_vectors(previous("envelope.json"))
    # Negative vectors against the X25519 envelope (DEU's roster key is hybrid: the
    # X25519 case is opened with DEU's X25519 key, named by its rkid).
    envelopes["negative"] = negative_envelopes(raws[str(HpkeSuite.MLKEM768_X25519)])
    files = {
        "canonical.json": canonical_vectors(),
        "ids.json": id_vectors(),
        "keys.json": key_vectors(),
        "roster.json": roster_vectors(old_roster),
        "envelope.json": envelopes,
        "receipt.json": receipt_vectors(raws[str(HpkeSuite.MLKEM768_X25519)]),
        "handshake.json": handshake_vectors(),
        "frames.json": frame_vectors(),
        "announcement.json": announcement_vectors(),
        "audit.json": audit_vectors(),
        "bodies.json": {
            "description": "The JSON Schema (2020-12) of every message body and the records"
            " in them; `types` maps each message type to its body's schema. Cross-field rules"
            " are in each description.",
            "types": {str(t): cls.__name__ for t, cls in BODY_TYPES.items()},
            "schemas": json_schemas("#/schemas/"),
        },
    }
    changed = [name for name, value in files.items() if write(name, value)]
    print(f"{len(files)} vector files, {len(changed)} changed: {', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
