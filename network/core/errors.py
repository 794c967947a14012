"""Every error cpn raises, in one tree with one root.

    CpnError
    ├── ConfigError (ValueError)          a damaged or incomplete config file
    ├── KeyFileError (ValueError)         a missing, damaged or unprotected key file
    ├── BodyError (ValueError)            a message body that fails validation (names the field)
    ├── ApiError                          a node's HTTP API refused a request (status, field)
    ├── UnreachableError                  a node's HTTP API cannot be reached, or does not answer
    ├── StoreError (OSError)              the store cannot be used (damaged, newer, disk full)
    ├── AuditReadError (OSError)          a store file that cannot be read as one, offline
    ├── EvidenceError (ValueError)        an evidence package that does not prove what it says
    ├── BusyError                         too many submissions wait already: try again later
    ├── BodyStalledError (TimeoutError)   a request's body stopped arriving
    ├── HubFullError                      too many live event readers at once
    ├── LinkStalledError                  a peer stopped answering with receipts: dial again
    ├── LinkClosedError                   a link's connection closed (by us, the peer, the network)
    ├── LocalError                        what we did wrong: a bug in this node, never the peer's
    │   └── IllegalTransition             a lifecycle move the state tables do not list
    ├── RosterError (ValueError)          a roster that must not be used
    │   ├── RosterSignatureError          not signed by the pinned register keeper
    │   ├── RosterStaleError              older than (or as old as) the roster held
    │   ├── RosterExpiredError            outside its validity period
    │   └── UnknownNodeError              a node id the roster does not list (or lists as revoked)
    └── PeerError (ValueError)            what a remote party sent us, refused
        ├── OversizeError                 over the size limit
        ├── MalformedError                not JSON, not canonical, or missing/ill-typed field
        ├── UnsupportedVersionError       a protocol version we do not speak
        ├── UnknownSignerError            signer or key id not in the current roster, or revoked
        ├── BadSignatureError             a signature that does not verify (anything changed)
        ├── WrongRecipientError           addressed to another node
        ├── ClockSkewError                created too far from our clock
        ├── ExpiredError                  past its expiry
        ├── DecryptError                  the sealed body does not open
        ├── DigestMismatchError           a receipt for other bytes than those we sent
        ├── SignInRefused                 a single sign-on answer that signs no one in here
        ├── HandshakeError                a link handshake that does not prove the peer
        ├── StaleAnnouncementError        a route announcement no newer than the one held
        ├── HopLimitError                 a message relayed more times than its hop limit
        ├── LoopError                     a message that came back to a node it went through
        ├── NoSuchRecipientError          a message to relay to a node the roster lacks
        ├── UnknownReceiptError           a receipt for a message we never sent
        └── ProofError                    a Merkle proof that does not prove what it claims
            ├── InclusionProofError       the leaf is not in the tree with that root
            └── ConsistencyProofError     the newer tree does not extend the older one

`PeerError` is what someone else did wrong (h11's RemoteProtocolError);
`LocalError` is what this node did wrong (h11's LocalProtocolError): a bug, which
no input from a peer or an officer should be able to cause. The others are the
world's or our operator's: a file, a disk, a network, a roster.

Every error carries `reason`, a short stable code (unique in the tree) that goes
into receipts and the audit log, and a human message saying what failed.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "AuditReadError",
    "BadSignatureError",
    "BodyError",
    "BodyStalledError",
    "BusyError",
    "ClockSkewError",
    "ConfigError",
    "ConsistencyProofError",
    "CpnError",
    "DecryptError",
    "DigestMismatchError",
    "EvidenceError",
    "ExpiredError",
    "HandshakeError",
    "HopLimitError",
    "HubFullError",
    "IllegalTransition",
    "InclusionProofError",
    "KeyFileError",
    "LinkClosedError",
    "LinkStalledError",
    "LocalError",
    "LoopError",
    "MalformedError",
    "NoSuchRecipientError",
    "OversizeError",
    "PeerError",
    "ProofError",
    "RosterError",
    "RosterExpiredError",
    "RosterSignatureError",
    "RosterStaleError",
    "SignInRefused",
    "StaleAnnouncementError",
    "StoreError",
    "UnknownNodeError",
    "UnknownReceiptError",
    "UnknownSignerError",
    "UnreachableError",
    "UnsupportedVersionError",
    "WrongRecipientError",
]


class CpnError(Exception):
    """Root of every cpn error. `reason` is a short, stable code."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(CpnError, ValueError):
    reason = "bad_config"


class KeyFileError(CpnError, ValueError):
    reason = "bad_key_file"


class BodyError(CpnError, ValueError):
    """A message body that fails validation; `field` is the dotted path to it."""

    reason = "bad_body"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class ApiError(CpnError):
    """What a node's HTTP API answered to a request it refused (`cpn send` and the like).

    `status` is the HTTP status; `field` the request field or query parameter the
    node named, if any.
    """

    reason = "api_refused"

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class UnreachableError(CpnError):
    """A node's HTTP API could not be reached (refused, unknown host, timed out)."""

    reason = "unreachable"


class StoreError(CpnError, OSError):
    """The store cannot be used (damaged, newer schema, disk full, read-only)."""

    reason = "store_error"


class AuditReadError(CpnError, OSError):
    """A store file (or a witnessed checkpoint file) that cannot be read as one."""

    reason = "store_unreadable"


class EvidenceError(CpnError, ValueError):
    """An evidence package that does not verify; the message names the first item that fails
    and why (`cpn evidence verify` prints it)."""

    reason = "evidence_unverified"


class BusyError(CpnError):
    """Too much of this kind of work is waiting already: try again after `retry_after_s`."""

    reason = "busy"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BodyStalledError(CpnError, TimeoutError):
    """Nothing of a request's body arrived for `[api] connection_idle`.

    A TimeoutError too: aiohttp, reading what is left of a body once the answer is
    written, takes it as one and closes the connection.
    """

    reason = "body_stalled"


class HubFullError(CpnError):
    """Too many subscribers at once."""

    reason = "too_many_readers"


class LinkStalledError(CpnError):
    """A peer stopped answering with receipts: drop the link and dial again.

    Not a PeerError: nothing it sent is refused, and the link is not cut off for it.
    """

    reason = "link_stalled"


class LinkClosedError(CpnError):
    """A link's connection closed (the peer's close, ours, or the network's): it ends."""

    reason = "link_closed"


class LocalError(CpnError):
    """What this node did wrong: a bug, never a peer's or an officer's doing."""

    reason = "local_error"


class IllegalTransition(LocalError):
    """A lifecycle move from `state` on `event` that the state tables do not list."""

    reason = "illegal_transition"

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"no transition from {state} on {event}")
        self.state = state
        self.event = event


class RosterError(CpnError, ValueError):
    reason = "bad_roster"


class RosterSignatureError(RosterError):
    reason = "roster_bad_signature"


class RosterStaleError(RosterError):
    reason = "roster_stale"


class RosterExpiredError(RosterError):
    reason = "roster_expired"


class UnknownNodeError(RosterError):
    reason = "unknown_node"


class PeerError(CpnError, ValueError):
    """Something a remote party sent that we refuse."""

    reason = "refused"


class OversizeError(PeerError):
    reason = "oversize"


class MalformedError(PeerError):
    reason = "malformed"


class UnsupportedVersionError(PeerError):
    reason = "unsupported_version"


class UnknownSignerError(PeerError):
    reason = "unknown_signer"


class BadSignatureError(PeerError):
    reason = "bad_signature"


class WrongRecipientError(PeerError):
    reason = "wrong_recipient"


class ClockSkewError(PeerError):
    reason = "clock_skew"


class ExpiredError(PeerError):
    reason = "expired"


class DecryptError(PeerError):
    reason = "decrypt_failed"


class DigestMismatchError(PeerError):
    reason = "digest_mismatch"


class SignInRefused(PeerError):
    """A single sign-on provider's answer that does not sign its person in here."""

    reason = "sign_in_refused"


class HandshakeError(PeerError):
    reason = "handshake_failed"


class StaleAnnouncementError(PeerError):
    reason = "stale_announcement"


class HopLimitError(PeerError):
    reason = "hop_limit"


class LoopError(PeerError):
    reason = "loop"


class NoSuchRecipientError(PeerError):
    reason = "unknown_recipient"


class UnknownReceiptError(PeerError):
    reason = "unknown_message"


class ProofError(PeerError):
    reason = "bad_proof"


class InclusionProofError(ProofError):
    reason = "bad_inclusion_proof"


class ConsistencyProofError(ProofError):
    reason = "bad_consistency_proof"
