"""Realistic, valid message bodies as JSON models, for tests, benchmarks and the demo.

The story: the French 24/7 contact point (Office anti-cybercriminalité, OFAC)
investigates a fraudulent online shop and asks the Irish contact point to
preserve the data of the e-mail account behind it, which an Irish provider
hosts; Ireland acknowledges and answers. Every identifier is fictitious:
example domains (RFC 2606), documentation IP addresses (RFC 5737, RFC 3849)
and telephone numbers from ranges reserved for fiction.
"""

from __future__ import annotations

import copy
from typing import Any

from network.core.records import MessageType

__all__ = ["SAMPLE_REQUEST_ID", "sample_body"]

SAMPLE_REQUEST_ID = "01a1f94a-eec0-75c3-9e17-b2d40f68a1e7"
"""The id of the sample preservation request (a UUIDv7 of 2026-11-20T14:10:00Z)."""

_AUTHORITY: dict[str, Any] = {
    "organisation": "Police nationale, Direction nationale de la police judiciaire",
    "unit": "Office anti-cybercriminalité (OFAC), point de contact 24/7",
    "officer": "Commandante Claire Martin",
    "phone": "+33 1 99 00 42 17",
    "email": "permanence-24-7@ofac.interieur.example",
    "office_hours": "24/7 duty line; case officer Mon-Fri 08:30-18:30",
    "time_zone": "Europe/Paris",
    "reply_channel": "cpn",
    "second_contact": {
        "name": "Capitaine Julien Lefèvre",
        "phone": "+33 1 99 00 42 18",
        "email": "j.lefevre@ofac.interieur.example",
    },
}

_HANDLING: dict[str, Any] = {
    "confidential": True,
    "do_not_notify_subject": True,
    "use_limited_to_investigation": True,
}

_REQUEST: dict[str, Any] = {
    "case_ref": "OFAC-2026-004317",
    "authority": _AUTHORITY,
    "language": "en",
    "summary": (
        "Fraudulent online shop selling non-existent electronics; about 340 victims in "
        "France, losses over EUR 210,000. The shop's contact account is hosted in Ireland."
    ),
    "handling": _HANDLING,
}

_ASSISTANCE: dict[str, Any] = {
    **_REQUEST,
    "request": (
        "Advice on how to obtain, under Irish law, the login history of an e-mail account "
        "hosted by Example Mail Services Ltd., and the time such a request usually takes."
    ),
    "concerned": "The account contact@bonnes-affaires-hightech.example and its holder.",
    "grounds": (
        "Organised fraud (Code pénal, Art. 313-1 and 313-2); the account is the only known "
        "link to the persons running the shop."
    ),
}

_BODIES: dict[MessageType, dict[str, Any]] = {
    MessageType.PRESERVATION: {
        **_REQUEST,
        "status": "new",
        "offence": (
            "Organised fraud (escroquerie en bande organisée, Code pénal Art. 313-1 and 313-2) "
            "and laundering of its proceeds (Art. 324-1)."
        ),
        "facts": (
            "Since September 2026 bonnes-affaires-hightech.example has taken payments for "
            "phones and laptops never delivered. Victims were contacted from the account "
            "below. The shop went offline on 20 November 2026; the account is still active."
        ),
        "data": {
            "description": (
                "Subscriber data, login history with IP addresses and stored messages of the "
                "account that ran the shop."
            ),
            "identifiers": [
                {"kind": "email", "value": "contact@bonnes-affaires-hightech.example"},
                {
                    "kind": "ip_address",
                    "value": "203.0.113.45",
                    "timestamp": "2026-11-20T14:03:00Z",
                    "time_zone": "UTC",
                },
                {
                    "kind": "ip_address",
                    "value": "2001:db8:4f2a::17",
                    "timestamp": "2026-11-18T21:47:12+01:00",
                    "time_zone": "Europe/Paris",
                },
                {"kind": "url", "value": "https://bonnes-affaires-hightech.example/commande"},
            ],
            "categories": ["subscriber", "traffic", "content"],
        },
        "custodian": "Example Mail Services Ltd., Dublin, Ireland",
        "necessity": (
            "The provider keeps login records for 90 days only and the suspects may delete the "
            "account; the data would be lost before an MLA request is executed."
        ),
        "mla_intended": True,
        "period_days": 90,
    },
    MessageType.TRAFFIC_DISCLOSURE: {
        **_REQUEST,
        "follows": SAMPLE_REQUEST_ID,
        "traffic_data": (
            "Connections to the account on 18 and 20 November 2026 came from a hosting "
            "provider in a third country; see path."
        ),
        "providers": ["Example Mail Services Ltd. (IE)", "Example Hosting BV (NL)"],
        "path": "203.0.113.45, allocated to Example Hosting BV, Amsterdam.",
    },
    MessageType.MLA_NOTICE: {
        **_REQUEST,
        "follows": SAMPLE_REQUEST_ID,
        "mla_reference": "DACG/BEPI 2026-1187",
        "mla_date": "2027-01-12",
    },
    MessageType.TECHNICAL_ADVICE: {
        **_ASSISTANCE,
        "request": (
            "Advice on reading the provider's login-record export: which time zone its "
            "timestamps are in, and whether its IPv6 addresses are shortened."
        ),
    },
    MessageType.LEGAL_INFORMATION: dict(_ASSISTANCE),  # what Irish law allows, and how long
    MessageType.EVIDENCE: {
        **_ASSISTANCE,
        "request": "Copies of the account's stored messages exchanged with victims in France.",
    },
    MessageType.LOCATE: {
        **_ASSISTANCE,
        "request": "Any information on where the holder of the account is located.",
    },
    MessageType.EMERGENCY: {
        **_REQUEST,
        "summary": "Threat to kill posted from an account hosted in Ireland.",
        "risk": (
            "A user announced in a public post, 40 minutes ago, an attack on a school in "
            "Lyon today at 15:00 local time, with a photo of a firearm."
        ),
        "data_needed": "Subscriber data and the last login IP addresses of the account.",
    },
    MessageType.ACKNOWLEDGEMENT: {
        "in_reply_to": SAMPLE_REQUEST_ID,
        "officer": "Detective Sergeant Aoife Byrne, Garda National Cyber Crime Bureau",
        "case_ref": "GNCCB-26-2291",
        "note": "Taken on; the provider has been contacted.",
    },
    MessageType.RESPONSE: {
        "in_reply_to": SAMPLE_REQUEST_ID,
        "status": "preserved",
        "case_ref": "GNCCB-26-2291",
        "note": "All three categories preserved. The provider was told not to notify the user.",
        "preserved_until": "2027-02-18",
        "provider_reference": "EMS-LE-2026-55810",
    },
    MessageType.FOLLOW_UP: {
        "follows": SAMPLE_REQUEST_ID,
        "action": "information",
        "case_ref": "PN-CYBER-2026-0412",
        "information": (
            "The account was created on 2026-09-02 from the IP address 203.0.113.45;"
            " the victim's report is dated 2026-11-19."
        ),
    },
    MessageType.ATTACHMENT_PART: {
        "of": SAMPLE_REQUEST_ID,
        "attachment": 0,
        "part": 0,
        "data": "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c-PgplbmRvYmoK",
    },
}


def sample_body(message_type: MessageType | str, **overrides: Any) -> dict[str, Any]:
    """A fresh, valid JSON-model body of the given type, with top-level keys replaced.

    Raises ValueError for an unknown message type.
    """
    body = copy.deepcopy(_BODIES[MessageType(message_type)])
    body.update(overrides)
    return body
