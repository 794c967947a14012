"""Four eyes (issue 21, item 4): which outgoing requests a second officer approves.

Some jurisdictions require that a request leaving the country is approved by a second
person (a supervisor, a prosecutor). A node's `[approval]` names the request types; a
request of one is held (`awaiting_approval`, not sent, no deadline running) until an
officer with the `approver` role, not its composer, approves it (it goes, and its
deadlines start then) or sends it back with a reason (it never leaves). A flash request
goes at once by default and is approved afterwards: a life at risk does not wait for a
signature. Every step is audited, so it is in the timeline and the evidence package.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from network.core.records import MessageType, Priority

__all__ = ["NO_APPROVAL", "ApprovalPolicy"]


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """Four eyes: the request types a second officer (role `approver`) approves before they
    leave; `flash_after`: a flash one goes at once and is approved afterwards."""

    types: frozenset[MessageType] = frozenset()
    flash_after: bool = True

    def holds(self, message_type: MessageType, priority: Priority) -> bool:
        """Whether a request of this type and priority waits for approval before it goes."""
        return message_type in self.types and not (priority is Priority.FLASH and self.flash_after)

    def wants(self, message_type: MessageType) -> bool:
        """Whether a request of this type needs approval at all (before or after)."""
        return message_type in self.types


NO_APPROVAL: Final = ApprovalPolicy()
