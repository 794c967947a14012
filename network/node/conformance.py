"""The conformance runner: drive a node from outside, as a peer would, through the MUST
and MUST NOT cases of docs/PROTOCOL.md, and say which hold.

It is what another implementation runs against itself (`cpn conformance URL`): it
speaks only the wire, as a roster member (its keys, its roster, its pinned keeper key),
to the node under test. Each case opens its own link and ends with a verdict: the
node's answer (a receipt, a close code) is what the specification says, or it is not.
The runner's identity must not be running as a node meanwhile (the node under test
would keep that node's link and close ours as a duplicate).

The other module that imports websockets (links.py is the node's own side).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from network.core.crypto import SigningKey, certificate_pem, generate_signing_key, sha256
from network.core.envelope import Envelope, seal, verify_receipt
from network.core.errors import CpnError
from network.core.protocol import (
    FRAME_HELLO,
    FRAME_LIMITS,
    FRAME_RECEIPT,
    LinkHandshake,
    Role,
    envelope_frame,
    frame,
    split_frame,
)
from network.core.records import (
    MessageType,
    NodeId,
    Priority,
    b64encode,
    canonical,
)
from network.core.roster import Roster
from network.node.keys import NodeKeys, load_tls_chain
from network.samples import sample_body

__all__ = ["CaseResult", "run_conformance"]

TIMEOUT = 10.0  # seconds for any one answer


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    requirement: str  # what docs/PROTOCOL.md says, in a line
    ok: bool
    detail: str


class _Failed(Exception):
    """A case's expectation not met: its message says what came instead."""


class _Runner:
    def __init__(
        self, url: str, keys: NodeKeys, roster: Roster, target: NodeId, clock: Callable[[], int]
    ) -> None:
        self.url = url
        self.keys = keys
        self.roster = roster
        self.target = target
        self.clock = clock
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.check_hostname = False  # pinned by certificate, as a node pins it
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(
            cadata=certificate_pem(roster.active_card(target).tls_cert)
        )
        load_tls_chain(self.context, keys)

    # -- the link ---------------------------------------------------------------------

    def _connect(self) -> Any:
        return connect(
            self.url,
            ssl=self.context,
            proxy=None,
            compression=None,
            max_size=None,
            open_timeout=TIMEOUT,
            close_timeout=2,
        )

    def _handshake(self, ws: ClientConnection, signing: SigningKey | None = None) -> LinkHandshake:
        der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return LinkHandshake(
            role=Role.CLIENT,
            me=self.keys.node_id,
            signing_key=signing or self.keys.signing,
            roster=self.roster,
            my_cert_sha256=self.keys.card.tls_sha256,
            peer_cert_sha256=sha256(der),
            nonce=os.urandom(32),
            expected_peer=self.target,
        )

    async def _linked(
        self, ws: ClientConnection, *, hello: dict[str, Any] | None = None
    ) -> LinkHandshake:
        """Run the signed handshake; `hello` changes our hello's fields."""
        handshake = self._handshake(ws)
        for out in handshake.start():
            if hello is not None:
                out = frame(FRAME_HELLO, canonical({**json.loads(out[1:]), **hello}))
            await ws.send(out)
        while not handshake.done:
            for out in handshake.receive(await asyncio.wait_for(ws.recv(), TIMEOUT)):
                await ws.send(out)
        return handshake

    async def _receipt(self, ws: ClientConnection) -> dict[str, Any]:
        """The next receipt the node sends, verified against the roster."""
        while True:
            data = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if isinstance(data, bytes) and data[:1] == FRAME_RECEIPT:
                _, payload = split_frame(data)
                receipt = verify_receipt(payload, roster=self.roster, now=self.clock())
                if receipt.sender != self.target:
                    raise _Failed(f"receipt signed by {receipt.sender}, not {self.target}")
                statement: dict[str, Any] = json.loads(payload)["receipt"]
                statement["raw"] = payload
                return statement

    async def _closed_with(self, ws: ClientConnection, expected: int) -> str:
        """Read until the node closes the link; _Failed unless it closed with `expected`."""
        try:
            while True:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        except TimeoutError:
            raise _Failed(f"the link stayed open for {TIMEOUT:.0f} s") from None
        if code != expected:
            raise _Failed(f"closed with {code}")
        return f"closed with {expected}"

    # -- envelopes --------------------------------------------------------------------

    def _envelope(self, **changes: Any) -> Envelope:
        card = self.roster.active_card(self.target)
        options: dict[str, Any] = {
            "sender": self.keys.node_id,
            "recipient": self.target,
            # Routine, so that no duty officer is paged (an emergency is never routine).
            "message_type": MessageType.TECHNICAL_ADVICE,
            "body": {**sample_body("technical_advice"), "summary": "cpn conformance test: ignore"},
            "priority": Priority.ROUTINE,
            "now": self.clock(),
            "random_bytes": os.urandom(10),
            "signing_key": self.keys.signing,
            "recipient_key": card.hpke_key,
            **changes,
        }
        return seal(**options)

    def _resigned(self, envelope: Envelope, sealed: str | None = None, **header: Any) -> bytes:
        """The envelope with header fields (or the sealed text) changed, its outer signature
        made again (so only the check of what changed can refuse it)."""
        doc = json.loads(envelope.raw)
        doc["header"].update(header)
        if sealed is not None:
            doc["sealed"] = sealed
        signed = canonical({"header": doc["header"], "sealed": doc["sealed"]})
        doc["sig"] = b64encode(self.keys.signing.sign(b"cpn/v1 outer\n" + signed))
        return canonical(doc)

    async def _answer(self, raw: bytes) -> dict[str, Any]:
        async with self._connect() as ws:
            await self._linked(ws)
            await ws.send(envelope_frame([], raw))
            return await self._receipt(ws)

    async def _refused(self, raw: bytes, reason: str) -> str:
        receipt = await self._answer(raw)
        got = (receipt["outcome"], receipt.get("reason"))
        if got != ("rejected", reason):
            raise _Failed(f"receipt {got[0]}{f' ({got[1]})' if got[1] else ''}")
        return f"rejected: {reason}, signed"

    # -- the cases ----------------------------------------------------------------------

    async def handshake(self) -> str:
        async with self._connect() as ws:
            handshake = await self._linked(ws)
            return f"linked at version {handshake.version}, {self.target}'s signature verified"

    async def later_version(self) -> str:
        async with self._connect() as ws:
            handshake = await self._linked(ws, hello={"v": 99, "features": ["from the future"]})
            # The handshake refused a version we do not speak; the target may speak fewer.
            return (
                f"a version-99 offer with an unknown field is answered with version"
                f" {handshake.version}"
            )

    async def _hello_refused(self, hello: dict[str, Any]) -> str:
        async with self._connect() as ws:
            handshake = self._handshake(ws)
            first = handshake.start()[0]
            await ws.send(frame(FRAME_HELLO, canonical({**json.loads(first[1:]), **hello})))
            return await self._closed_with(ws, 1008)

    async def hello_to_another(self) -> str:
        return await self._hello_refused({"to": "ZZZ" if self.target != "ZZZ" else "YYY"})

    async def hello_version_0(self) -> str:
        return await self._hello_refused({"v": 0})

    async def bad_link_signature(self) -> str:
        async with self._connect() as ws:
            handshake = self._handshake(ws, signing=generate_signing_key())
            for out in handshake.start():
                await ws.send(out)
            for out in handshake.receive(await asyncio.wait_for(ws.recv(), TIMEOUT)):
                await ws.send(out)  # our auth, signed by a key the roster does not hold
            return await self._closed_with(ws, 1008)

    async def _cut(self, data: bytes | str) -> str:
        async with self._connect() as ws:
            await self._linked(ws)
            await ws.send(data)
            return await self._closed_with(ws, 1002)

    async def text_frame(self) -> str:
        return await self._cut("R{}")

    async def unknown_kind(self) -> str:
        return await self._cut(b"X{}")

    async def oversize_frame(self) -> str:
        return await self._cut(FRAME_RECEIPT + b" " * (FRAME_LIMITS[FRAME_RECEIPT] + 1))

    async def envelope_accepted(self) -> str:
        envelope = self._envelope()
        receipt = await self._answer(envelope.raw)
        if receipt["outcome"] != "accepted":
            raise _Failed(f"receipt {receipt['outcome']} ({receipt.get('reason')})")
        if receipt["digest"] != b64encode(envelope.digest) or receipt["for"] != envelope.header.id:
            raise _Failed("the receipt is not for the bytes sent")
        if receipt["scope"] != "end_to_end" or receipt["to"] != self.keys.node_id:
            raise _Failed(f"receipt scope {receipt['scope']} to {receipt['to']}")
        return "accepted: end to end, signed, over the exact bytes"

    async def replay(self) -> str:
        envelope = self._envelope()
        first = await self._answer(envelope.raw)
        again = await self._answer(envelope.raw)
        if again["raw"] != first["raw"]:
            raise _Failed(f"another receipt: {again['outcome']}")
        return "the original receipt, byte for byte"

    async def id_conflict(self) -> str:
        envelope = self._envelope()
        await self._answer(envelope.raw)
        value = int(envelope.header.id.replace("-", ""), 16)
        same_id = self._envelope(
            now=value >> 80,  # the id's time and random bits, other bytes
            random_bytes=((value >> 64 & 0xFFF) << 68 | value & (2**62 - 1)).to_bytes(10, "big"),
            priority=Priority.URGENT,
        )
        if same_id.header.id != envelope.header.id:
            raise _Failed("could not make other bytes under the same id")
        return await self._refused(same_id.raw, "id_conflict")

    async def forged(self) -> str:
        doc = json.loads(self._envelope().raw)
        doc["sig"] = b64encode(b"\x00" * 64)
        return await self._refused(canonical(doc), "bad_signature")

    async def expired(self) -> str:
        now = self.clock()
        return await self._refused(self._envelope(now=now - 120_000, ttl_ms=60_000).raw, "expired")

    async def clock_skew(self) -> str:
        later = self._envelope(now=self.clock() + 3_600_000)
        return await self._refused(later.raw, "clock_skew")

    async def unknown_version(self) -> str:
        return await self._refused(self._resigned(self._envelope(), v=2), "unsupported_version")

    async def tampered(self) -> str:
        envelope = self._envelope()
        text = envelope.sealed_text
        changed = text[:80] + ("A" if text[80] != "A" else "B") + text[81:]
        return await self._refused(self._resigned(envelope, sealed=changed), "decrypt_failed")

    async def wrong_key(self) -> str:
        return await self._refused(
            self._resigned(self._envelope(), rkid="AAAAAAAAAAAAAAAA"), "wrong_recipient"
        )


_CASES: tuple[tuple[str, str, str], ...] = (
    (
        "handshake",
        "6.2 the signed handshake completes and the node's signature verifies",
        "handshake",
    ),
    (
        "later version",
        "10 a later version offered is answered with the version both speak",
        "later_version",
    ),
    ("hello to another", "6.2 a hello for another node MUST be refused", "hello_to_another"),
    ("hello version 0", "6.2 a hello of a version not spoken MUST be refused", "hello_version_0"),
    (
        "link signature",
        "6.2 a handshake signature that does not verify MUST be refused",
        "bad_link_signature",
    ),
    ("text frame", "6.1 a text message MUST cut the link", "text_frame"),
    ("unknown frame", "6.3 an unknown frame kind MUST cut the link", "unknown_kind"),
    ("oversize frame", "6.3 a payload over its kind's limit MUST cut the link", "oversize_frame"),
    (
        "envelope",
        "5.2 an envelope is answered with a signed end-to-end receipt over its bytes",
        "envelope_accepted",
    ),
    ("replay", "6.3 the same bytes again get the original receipt, byte for byte", "replay"),
    (
        "id conflict",
        "6.3 other bytes under an id held MUST be rejected: id_conflict",
        "id_conflict",
    ),
    ("forged", "5.1 an outer signature that does not verify: bad_signature", "forged"),
    ("expired", "5.1 an envelope past its expiry: expired", "expired"),
    ("clock skew", "5.1 an envelope created too far ahead: clock_skew", "clock_skew"),
    ("version", "5.1 a header version not spoken: unsupported_version", "unknown_version"),
    ("tampered", "5.1 sealed bytes changed: decrypt_failed", "tampered"),
    ("wrong key", "5.1 sealed to a key the recipient does not hold: wrong_recipient", "wrong_key"),
)


async def run_conformance(
    url: str,
    *,
    keys: NodeKeys,
    roster: Roster,
    target: NodeId,
    clock: Callable[[], int],
    report: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case against the node `target` at `url`, as the node `keys` name."""
    runner = _Runner(url, keys, roster, target, clock)
    results = []
    for name, requirement, method in _CASES:
        case: Callable[[], Awaitable[str]] = getattr(runner, method)
        try:
            result = CaseResult(name, requirement, True, await case())
        except _Failed as exc:
            result = CaseResult(name, requirement, False, str(exc))
        except (CpnError, OSError, TimeoutError, WebSocketException, ssl.SSLError) as exc:
            result = CaseResult(name, requirement, False, f"{type(exc).__name__}: {exc}")
        results.append(result)
        if report is not None:
            report(result)
    return results
