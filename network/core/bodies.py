"""Typed message bodies: one frozen record per message type, and the parser that builds them.

The body is what travels sealed end to end (DESIGN.md, "Message types"). Its
fields follow these sources:

- Budapest Convention (ETS No. 185): Art. 29 (expedited preservation of stored
  computer data; 29(2) what a request specifies, 29(3) preservation without
  requiring dual criminality, 29(4) and 29(5) the grounds of refusal,
  29(6) the notice that preservation would not secure the data, 29(7) at least
  60 days, and on until the mutual legal assistance request is decided),
  Art. 30 (expedited disclosure of preserved traffic data: the service providers
  and the path), Art. 35 (the 24/7 network: technical advice, preservation,
  evidence, locating suspects);
- the T-CY data preservation request template (requesting authority, offence
  and summary of facts, data and its relation to the offence, custodian or
  location, necessity, intended MLA request, conditions attached);
- the UN Convention against Cybercrime, which follows Budapest here; the article
  numbers cited for it (41 the 24/7 network, 42 preservation, 43 disclosure of
  traffic data, "UN 4x" below) are pointers, not yet checked against the adopted
  text (docs/LEGAL.md): Budapest is the reference.

Rules `parse_body` applies to untrusted JSON (as `records.parse_json` yields it):

- a body and every nested record is a JSON object; unknown fields are refused;
  required fields must be present; optional ones may be absent or null, and
  `body_to_json` omits them;
- strings must not be empty or blank; a line (names, phones, references) holds
  at most MAX_LINE bytes of UTF-8 and no control character or bidirectional
  formatting character; free text (summary, facts, notes) at most MAX_TEXT bytes,
  newlines and tabs allowed (bytes, as the body's cap counts them); message
  ids, dates, date-times, e-mail addresses, time zones and language tags are
  checked for shape;
- integers are integers (not booleans, within their range), booleans are
  booleans (not 0 or 1), closed sets are `StrEnum` values, arrays hold at most
  MAX_ITEMS items (JSON arrays become tuples, so records stay immutable);
- per-field checks run in field order, then the record's cross-field rules
  (e.g. `extends` iff `status` is `extension`); the first failure raises
  `BodyError(field, problem)` with the dotted path of the field, such as
  `data.identifiers[2].timestamp`.

The cross-field rules live in each record's `__post_init__`, so they hold for
every instance, however built. `parse_body(t, body_to_json(b)) == b` for every
body `b` that `parse_body` returns. Priority is not in the body: it is in the
signed envelope header.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from types import MappingProxyType, NoneType
from typing import (
    Annotated,
    Any,
    ClassVar,
    Final,
    TypeAlias,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

from network.core.attachments import (
    MAX_ATTACHMENTS,
    MAX_FILE_BYTES,
    MAX_PART_TEXT,
    MAX_PARTS,
    PART_BYTES,
    MediaType,
    file_name_problem,
    parts_for,
)
from network.core.errors import BodyError, CpnError
from network.core.records import (
    MAX_SAFE_INTEGER,
    MESSAGE_ID_PATTERN,
    MessageId,
    MessageType,
    NodeId,
    Priority,
    b64decode,
    is_node_id,
    message_id_problem,
)
from network.core.timezones import IANA_TIME_ZONES

__all__ = [
    "BODY_TYPES",
    "INTERIM_ANSWERS",
    "LAWFUL_ANSWERS",
    "MAX_ITEMS",
    "MAX_LINE",
    "MAX_TEXT",
    "REFERENCES",
    "Acknowledgement",
    "Authority",
    "Body",
    "Contact",
    "DataCategory",
    "DataToPreserve",
    "Emergency",
    "Evidence",
    "FollowUp",
    "FollowUpAction",
    "Handling",
    "Identifier",
    "IdentifierKind",
    "LegalInformation",
    "Locate",
    "MlaNotice",
    "Original",
    "Period",
    "PhoneRequest",
    "Preservation",
    "PreservationStatus",
    "PreservedPart",
    "Provider",
    "Reference",
    "RefusalGround",
    "ReplyChannel",
    "Request",
    "Response",
    "ResponseStatus",
    "TechnicalAdvice",
    "TrafficDisclosure",
    "When",
    "body_to_json",
    "body_type",
    "check_answer",
    "check_priority",
    "check_response",
    "describe_types",
    "follow_up_problem",
    "json_schemas",
    "language_problem",
    "parse_body",
    "parse_recipient",
    "parse_request",
    "reference_problem",
]

MAX_LINE = 200
MAX_TEXT = 20_000
MAX_ITEMS = 100


# --- Field rules, attached to types with Annotated and read by the converter ---


@dataclass(frozen=True, slots=True)
class _Str:
    max_len: int = MAX_LINE
    multiline: bool = False
    check: Callable[[str], str | None] | None = None  # returns the problem, or None
    format: str | None = None  # the shape `check` wants, named for clients (describe_types)
    schema: tuple[tuple[str, str], ...] = ()  # what `check` wants, as JSON Schema keywords


@dataclass(frozen=True, slots=True)
class _Int:
    low: int = -MAX_SAFE_INTEGER
    high: int = MAX_SAFE_INTEGER


@dataclass(frozen=True, slots=True)
class _Items:
    low: int = 0
    high: int = MAX_ITEMS
    unique: bool = False


@dataclass(frozen=True, slots=True)
class When:
    """A cross-field rule: field `name` goes with field `on` holding one of `values`.

    Then `name` is required (unless not `required`); with another value it is
    not allowed (unless not `only`). `problem` replaces the message for a
    missing field. Records list their rules in `rules`; `describe_types` hands
    them to clients, so a form shows and asks for the same fields.
    """

    name: str
    on: str
    values: tuple[str, ...]
    required: bool = True
    only: bool = True
    problem: str | None = None

    def check(self, record: object) -> None:
        """Raises BodyError(name, ...) when `record` breaks the rule."""
        value = getattr(record, self.name)
        current = getattr(record, self.on)
        if current in self.values:
            if self.required and value is None:
                wanted = " or ".join(self.values)
                raise BodyError(self.name, self.problem or f"required when {self.on} is {wanted}")
        elif self.only and value is not None:
            raise BodyError(self.name, f"not allowed when {self.on} is {current}")


def _check_rules(record: Any) -> None:
    for rule in record.rules:
        rule.check(record)


_UUID = re.compile(MESSAGE_ID_PATTERN[1:-1])
_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_COUNTRY = re.compile(r"[A-Z]{3}")
_TIME_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
# C0 and C1 controls, DEL, and lone surrogates (which no UTF-8 encoding can carry); in a
# one-line field (a name, a reference) also the bidirectional embeddings, overrides and
# isolates, which can make what an officer sees differ from what was sent.
_BAD_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_BAD_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


@functools.lru_cache(maxsize=1024)
def ip_text(text: str) -> str | None:
    """`text` as an IP address in the one form `ipaddress` writes it, or None if it is
    not one. Cached: a message's addresses are parsed where its body is checked and again
    where they are matched (`network.core.identifiers`), at the sender and the receiver."""
    if _plain_ipv4(text):  # already in its one form: no parse (most addresses)
        return text
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def _plain_ipv4(text: str) -> bool:
    """Four decimal octets with no leading zero: an IPv4 address exactly as `ipaddress`
    writes it (which refuses leading zeros)."""
    octets = text.split(".")
    return len(octets) == 4 and all(
        o.isascii() and o.isdigit() and len(o) <= 3 and (o == "0" or o[0] != "0") and int(o) < 256
        for o in octets
    )


def _email_problem(value: str) -> str | None:
    local, at, domain = value.partition("@")
    if at and local and domain and "@" not in domain and " " not in value:
        return None
    return "must be an e-mail address: one @ with text either side, no spaces"


def _country_problem(value: str) -> str | None:
    if is_node_id(value):
        return None
    return "must be an ISO 3166-1 alpha-3 country code, such as IRL"


def _full_date_problem(value: str) -> str | None:
    if _FULL_DATE.fullmatch(value):
        try:
            date.fromisoformat(value)
            return None
        except ValueError:
            pass
    return "must be a date as YYYY-MM-DD (RFC 3339 full-date), such as 2027-02-18"


def _date_time_problem(value: str) -> str | None:
    if _DATE_TIME.fullmatch(value):
        try:
            datetime.fromisoformat(value.removesuffix("Z") + ("+00:00" if value[-1] == "Z" else ""))
            return None
        except ValueError:
            pass
    return (
        "must be an RFC 3339 date-time with a time zone designator, "
        "such as 2026-11-20T14:03:00Z or 2026-11-20T15:03:00+01:00"
    )


def _time_zone_problem(value: str) -> str | None:
    if value in IANA_TIME_ZONES:
        return None
    if _TIME_ZONE.fullmatch(value):
        return f"{value} is not in the IANA time zone database (such as Europe/Paris or UTC)"
    return "must be an IANA time zone name, such as Europe/Paris or UTC"


def _instant(value: str) -> datetime:
    """An RFC 3339 date-time that `_date_time_problem` accepted, as an aware datetime."""
    return datetime.fromisoformat(value.removesuffix("Z") + ("+00:00" if value[-1] == "Z" else ""))


def language_problem(value: str) -> str | None:
    """Why `value` is not a language tag (BCP 47 in shape), or None."""
    if _LANGUAGE.fullmatch(value):
        return None
    return "must be a language tag, such as en, fr or pt-BR"


def _pattern(regex: re.Pattern[str]) -> tuple[str, str]:
    return ("pattern", f"^{regex.pattern}$")


Text = Annotated[str, _Str(MAX_TEXT, multiline=True)]
Ref = Annotated[
    MessageId, _Str(check=message_id_problem, format="message-id", schema=(_pattern(_UUID),))
]
Country = Annotated[
    str, _Str(3, check=_country_problem, format="country", schema=(_pattern(_COUNTRY),))
]
Email = Annotated[str, _Str(check=_email_problem, format="email", schema=(("format", "email"),))]
FullDate = Annotated[
    str,
    _Str(
        check=_full_date_problem,
        format="date",
        schema=(("format", "date"), _pattern(_FULL_DATE)),
    ),
]
DateTime = Annotated[
    str, _Str(check=_date_time_problem, format="date-time", schema=(("format", "date-time"),))
]
TimeZone = Annotated[
    str, _Str(check=_time_zone_problem, format="time-zone", schema=(_pattern(_TIME_ZONE),))
]
Language = Annotated[
    str, _Str(check=language_problem, format="language", schema=(_pattern(_LANGUAGE),))
]
IdentifierValue = Annotated[str, _Str(2048)]  # URLs run longer than a line
_SHA256 = re.compile(r"[A-Za-z0-9_-]{43}")


def _sha256_problem(value: str) -> str | None:
    return None if _SHA256.fullmatch(value) else "must be a SHA-256 in base64url (43 characters)"


def _part_data_problem(value: str) -> str | None:
    try:
        data = b64decode(value, field="data")
    except CpnError:
        return "must be base64url, unpadded"
    if not data or len(data) > PART_BYTES:
        return f"must hold 1 to {PART_BYTES} bytes"
    return None


Sha256 = Annotated[
    str, _Str(43, check=_sha256_problem, format="sha256", schema=(_pattern(_SHA256),))
]
FileName = Annotated[str, _Str(255, check=file_name_problem)]
PartData = Annotated[str, _Str(MAX_PART_TEXT, check=_part_data_problem)]


# --- Closed sets ---


class ReplyChannel(StrEnum):
    CPN = "cpn"
    EMAIL = "email"
    PHONE = "phone"


class PreservationStatus(StrEnum):
    NEW = "new"
    # A further period, citing the earlier request: from the T-CY template and practice
    # (Budapest 29(7) sets the 60-day minimum and the continuation until MLA is decided).
    EXTENSION = "extension"


class IdentifierKind(StrEnum):
    ACCOUNT = "account"
    IP_ADDRESS = "ip_address"
    URL = "url"
    EMAIL = "email"
    PHONE = "phone"
    DOMAIN = "domain"
    DEVICE = "device"
    OTHER = "other"


class DataCategory(StrEnum):
    SUBSCRIBER = "subscriber"
    TRAFFIC = "traffic"
    CONTENT = "content"


class ResponseStatus(StrEnum):
    PRESERVED = "preserved"
    PARTIALLY_PRESERVED = "partially_preserved"
    NOT_POSSIBLE = "not_possible"  # data not held, provider unknown
    REFUSED = "refused"  # Budapest 29(5)
    RISK_NOTICE = "risk_notice"  # Budapest 29(6): the sender decides whether to go on
    HELD_ELSEWHERE = "held_elsewhere"  # the data is in another State (`held_in`; cf. 30(1))
    CONDITIONS_NOT_MET = "conditions_not_met"  # the request's conditions cannot be met (28(3))
    NEEDS_INFO = "needs_info"
    # Budapest 35(2)(b): the point of contact is not the authority that executes; it hands
    # the request on (`transferred_to`) or waits for the judicial order its law requires.
    TRANSFERRED = "transferred"
    AWAITING_ORDER = "awaiting_order"
    COMPLETED = "completed"
    PARTIALLY_COMPLETED = "partially_completed"  # the `note` says what was done, what not


# Answers that say where the request stands, not how it ends: the request is taken on
# (acknowledged) and its response deadline keeps running, on both sides, until a final
# answer, a withdrawal, or (transferred, awaiting_order) the `expected_by` date it gives.
INTERIM_ANSWERS: Final = frozenset(
    {
        ResponseStatus.NEEDS_INFO,
        ResponseStatus.RISK_NOTICE,
        ResponseStatus.TRANSFERRED,
        ResponseStatus.AWAITING_ORDER,
    }
)


class FollowUpAction(StrEnum):
    """What a requester says after its request: the information a `needs_info` asked for,
    `proceed` despite a 29(6) risk notice, `withdraw` the request, or `release` a
    preservation no longer needed (the requested Party may let the data go)."""

    INFORMATION = "information"
    PROCEED = "proceed"
    WITHDRAW = "withdraw"
    RELEASE = "release"


class RefusalGround(StrEnum):
    """The grounds on which preservation may be refused: Budapest 29(4), dual criminality,
    by a Party that reserved it (and only for offences other than those of Arts. 2-11),
    and the grounds of 29(5)."""

    DUAL_CRIMINALITY = "dual_criminality"  # 29(4)
    POLITICAL_OFFENCE = "political_offence"
    SOVEREIGNTY = "sovereignty"
    SECURITY = "security"
    PUBLIC_ORDER = "public_order"
    OTHER_ESSENTIAL_INTERESTS = "other_essential_interests"


# --- Nested records ---


@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    name: str
    phone: str
    email: Email


@dataclass(frozen=True, slots=True, kw_only=True)
class Authority:
    """The requesting authority (Budapest 29(2)(a); T-CY template, section 1)."""

    organisation: str
    unit: str | None = None
    officer: str
    phone: str
    email: Email
    office_hours: str | None = None
    time_zone: TimeZone
    reply_channel: ReplyChannel | None = None
    second_contact: Contact | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Handling:
    """Conditions the sender attaches to the request and to what it yields."""

    confidential: bool
    do_not_notify_subject: bool
    use_limited_to_investigation: bool
    other_conditions: Text | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Identifier:
    """One identifier of the data: an account, an IP address with its time, a URL..."""

    kind: IdentifierKind
    value: IdentifierValue
    timestamp: DateTime | None = None
    time_zone: TimeZone | None = None

    rules: ClassVar[tuple[When, ...]] = (
        When(
            "timestamp",
            "kind",
            (IdentifierKind.IP_ADDRESS,),
            only=False,
            problem="required for an IP address, which without a time identifies no one",
        ),
    )

    def __post_init__(self) -> None:
        _check_rules(self)
        if self.kind == IdentifierKind.IP_ADDRESS:
            if ip_text(self.value) is None:
                raise BodyError("value", "must be an IP address when kind is ip_address")
        elif self.kind == IdentifierKind.EMAIL and (problem := _email_problem(self.value)):
            raise BodyError("value", problem)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataToPreserve:
    """The stored data to preserve and its relation to the offence (Budapest 29(2)(c))."""

    description: Text
    identifiers: Annotated[tuple[Identifier, ...], _Items(low=1)]
    categories: Annotated[tuple[DataCategory, ...], _Items(low=1, unique=True)]
    period: Period | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """The period the data covers (T-CY template: from, to)."""

    start: DateTime
    end: DateTime

    def __post_init__(self) -> None:
        if _instant(self.end) <= _instant(self.start):
            raise BodyError("end", f"must be after start ({self.start})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """The service provider holding the data, as far as known (T-CY template)."""

    name: str
    service: str | None = None  # the service concerned: e-mail, hosting, a social network
    country: Country | None = None  # where the provider is established


@dataclass(frozen=True, slots=True, kw_only=True)
class Original:
    """The request as written, in its own language, beside the translation the body is in
    (its `language`): the translation is what the requested Party acts on, the original
    what a court may later read."""

    language: Language
    text: Text


@dataclass(frozen=True, slots=True, kw_only=True)
class PhoneRequest:
    """A request made first by telephone, which this one confirms in writing: when, and
    with whom the caller spoke (so the requested Party can tie the two together, and
    count its clock from the call)."""

    called_at: DateTime
    spoke_to: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PreservedPart:
    """What a partial preservation kept: the identifiers (as the request gave their values)
    and the categories of data."""

    identifiers: Annotated[tuple[IdentifierValue, ...], _Items(low=1, unique=True)]
    categories: Annotated[tuple[DataCategory, ...], _Items(low=1, unique=True)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    """A file the message carries, under the inner signature: its name and kind as the
    sender gave them, its size and SHA-256, and how many `attachment_part` messages bring
    its bytes (network/core/attachments.py)."""

    name: FileName
    media_type: MediaType
    size: Annotated[int, _Int(low=1, high=MAX_FILE_BYTES)]
    sha256: Sha256
    parts: Annotated[int, _Int(low=1, high=MAX_PARTS)]

    def __post_init__(self) -> None:
        if self.parts != parts_for(self.size):
            raise BodyError(
                "parts", f"a file of {self.size} bytes travels in {parts_for(self.size)} parts"
            )


Attachments = Annotated[tuple[Attachment, ...], _Items(low=1, high=MAX_ATTACHMENTS)]


# --- Bodies ---


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What every request carries (all types but acknowledgement and response)."""

    message_type: ClassVar[MessageType]

    case_ref: str
    authority: Authority
    # The T-CY template's other parties: the authority investigating, where the 24/7 unit
    # (`authority`) sends for it, and the authority the request is for, where known.
    investigative_authority: str | None = None
    requested_authority: str | None = None
    language: Language
    original: Original | None = None
    confirms: PhoneRequest | None = None  # the written confirmation of a telephone request
    summary: Text
    handling: Handling
    attachments: Attachments | None = None  # files: screenshots, orders, logs

    def __post_init__(self) -> None:
        if self.original is not None and self.original.language == self.language:
            raise BodyError(
                "original.language",
                f"is the body's language ({self.language}): the original is the text in"
                " another language, of which the body is the translation",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Preservation(Request):
    """Expedited preservation of stored data: Budapest 29, UN 42. `extends` (the earlier
    request's id) is required when `status` is extension, and refused when it is new."""

    message_type: ClassVar[MessageType] = MessageType.PRESERVATION

    status: PreservationStatus
    extends: Ref | None = None
    # Budapest 30: a preservation sent to the State a traffic disclosure pointed to names
    # that disclosure (received from the State that found the path).
    follows: Ref | None = None
    offence: Text
    legal_provision: str | None = None  # the law that makes it an offence (T-CY template)
    facts: Text
    data: DataToPreserve
    custodian: Text | None = None
    provider: Provider | None = None
    necessity: Text
    mla_intended: bool
    period_days: Annotated[int, _Int(low=60, high=365)]  # Budapest 29(7): not less than 60 days

    rules: ClassVar[tuple[When, ...]] = (
        When("extends", "status", (PreservationStatus.EXTENSION,)),
    )

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        _check_rules(self)
        if not self.mla_intended:
            raise BodyError(
                "mla_intended",
                "must be true: a preservation request states that a request for mutual"
                " assistance will follow (Budapest Art. 29(2)(f))",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficDisclosure(Request):
    """Expedited disclosure of preserved traffic data: Budapest 30, UN 43."""

    message_type: ClassVar[MessageType] = MessageType.TRAFFIC_DISCLOSURE

    follows: Ref
    traffic_data: Text
    providers: Annotated[tuple[str, ...], _Items(low=1)]
    path: Text | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MlaNotice(Request):
    """The MLA request is sent: the data stays preserved until it is decided (Budapest 29(7))."""

    message_type: ClassVar[MessageType] = MessageType.MLA_NOTICE

    follows: Ref
    mla_reference: str
    mla_date: FullDate


@dataclass(frozen=True, slots=True, kw_only=True)
class _Assistance(Request):
    request: Text  # what is asked
    concerned: Text  # the systems or persons concerned
    grounds: Text


@dataclass(frozen=True, slots=True, kw_only=True)
class TechnicalAdvice(_Assistance):
    """Technical advice: Budapest 35(1)(a), UN 41."""

    message_type: ClassVar[MessageType] = MessageType.TECHNICAL_ADVICE


@dataclass(frozen=True, slots=True, kw_only=True)
class LegalInformation(_Assistance):
    """Provision of legal information (what the law of the requested Party allows, how and
    how long it takes): Budapest 35(1)(c)."""

    message_type: ClassVar[MessageType] = MessageType.LEGAL_INFORMATION


@dataclass(frozen=True, slots=True, kw_only=True)
class Evidence(_Assistance):
    """Collection of evidence: Budapest 35(1)(c). Stored data, real-time traffic data and
    interception (Arts. 31-34) go through mutual assistance, not this network."""

    message_type: ClassVar[MessageType] = MessageType.EVIDENCE


@dataclass(frozen=True, slots=True, kw_only=True)
class Locate(_Assistance):
    """Locating suspects: Budapest 35(1)(c), UN 41."""

    message_type: ClassVar[MessageType] = MessageType.LOCATE


@dataclass(frozen=True, slots=True, kw_only=True)
class Emergency(Request):
    """A significant and imminent risk to the life or safety of a person: the definition of
    the Budapest Convention's Second Additional Protocol (Art. 3(2)(c))."""

    message_type: ClassVar[MessageType] = MessageType.EMERGENCY

    risk: Text
    data_needed: Text


@dataclass(frozen=True, slots=True, kw_only=True)
class Acknowledgement:
    """A human has taken the request on."""

    message_type: ClassVar[MessageType] = MessageType.ACKNOWLEDGEMENT

    in_reply_to: Ref
    officer: str
    case_ref: str | None = None  # the receiver's own reference
    note: Text | None = None


_PRESERVED = (ResponseStatus.PRESERVED, ResponseStatus.PARTIALLY_PRESERVED)
_HANDED_ON = (ResponseStatus.TRANSFERRED, ResponseStatus.AWAITING_ORDER)


# What each kind of request may lawfully be answered (a `response`'s status). Preservation
# (Budapest 29(1)): held, in part, not possible, refused on 29(5) grounds, the 29(6) risk
# notice, or more information needed. A request for mutual assistance announced (29(7)):
# the preservation continues (`preserved`, with its new date), or not. Disclosure (30) and
# the assistance of Art. 35: done, not possible, refused, or more information needed.
# Acknowledgements and responses are not requests: nothing answers them.
_DONE = frozenset(
    {
        ResponseStatus.COMPLETED,
        ResponseStatus.NOT_POSSIBLE,
        ResponseStatus.REFUSED,
        ResponseStatus.NEEDS_INFO,
        ResponseStatus.HELD_ELSEWHERE,
        ResponseStatus.CONDITIONS_NOT_MET,
        ResponseStatus.PARTIALLY_COMPLETED,
        *_HANDED_ON,
    }
)
LAWFUL_ANSWERS: Final[Mapping[MessageType, frozenset[ResponseStatus]]] = {
    MessageType.PRESERVATION: frozenset(
        {
            ResponseStatus.PRESERVED,
            ResponseStatus.PARTIALLY_PRESERVED,
            ResponseStatus.NOT_POSSIBLE,
            ResponseStatus.REFUSED,
            ResponseStatus.RISK_NOTICE,
            ResponseStatus.NEEDS_INFO,
            ResponseStatus.HELD_ELSEWHERE,
            ResponseStatus.CONDITIONS_NOT_MET,
            *_HANDED_ON,
        }
    ),
    MessageType.MLA_NOTICE: frozenset(
        {
            ResponseStatus.PRESERVED,
            ResponseStatus.NOT_POSSIBLE,
            ResponseStatus.NEEDS_INFO,
            ResponseStatus.COMPLETED,
        }
    ),
    MessageType.TRAFFIC_DISCLOSURE: _DONE,
    MessageType.TECHNICAL_ADVICE: _DONE,
    MessageType.LEGAL_INFORMATION: _DONE,
    MessageType.EVIDENCE: _DONE,
    MessageType.LOCATE: _DONE,
    MessageType.EMERGENCY: _DONE,
}


@dataclass(frozen=True, slots=True)
class Reference:
    """What a request's reference field may name: a message of one of `types`, held in
    `box` (out: one we sent, in: one we received), exchanged with the same peer or not."""

    field: str
    types: frozenset[MessageType]
    box: str
    same_peer: bool


# What may carry files: requests, the answers to them, and follow-ups.
CARRY_ATTACHMENTS: Final = frozenset(LAWFUL_ANSWERS) | {MessageType.RESPONSE, MessageType.FOLLOW_UP}


# An extension and an MLA notice continue a preservation we asked of that same Party
# (Budapest 29(7)); a disclosure follows a preservation asked of the Party disclosing (30);
# a preservation may follow a disclosure received, sent on to the State it pointed to.
REFERENCES: Final[Mapping[MessageType, tuple[Reference, ...]]] = {
    MessageType.PRESERVATION: (
        Reference("extends", frozenset({MessageType.PRESERVATION}), "out", True),
        Reference("follows", frozenset({MessageType.TRAFFIC_DISCLOSURE}), "in", False),
    ),
    MessageType.MLA_NOTICE: (
        Reference("follows", frozenset({MessageType.PRESERVATION}), "out", True),
    ),
    MessageType.TRAFFIC_DISCLOSURE: (
        Reference("follows", frozenset({MessageType.PRESERVATION}), "in", True),
    ),
    # A follow-up speaks of one of our own requests to the Party it was sent to; only a
    # preservation can be released (`follow_up_problem`).
    MessageType.FOLLOW_UP: (Reference("follows", frozenset(LAWFUL_ANSWERS), "out", True),),
    # A part belongs to a message its sender sent to the same Party.
    MessageType.ATTACHMENT_PART: (Reference("of", CARRY_ATTACHMENTS, "out", True),),
}


def reference_problem(
    reference: Reference,
    found: tuple[MessageType | None, str, str] | None,
    peer: str,
    *,
    received: bool = False,
) -> str | None:
    """Why the message a reference names (`found`: its type, box and peer, None when not
    held) cannot be named there (None: it can), in a message we send to `peer` or, with
    `received`, one `peer` sent us. What a peer names is seen from the other side (the
    preservation it extends is one it sent us) and is checked only where we hold it:
    a reference to a message not held here (it may arrive later, or after a restore) or
    exchanged between the peer and a third State (`same_peer` False) is not ours to judge."""
    box = reference.box
    if received:
        if found is None or not reference.same_peer:
            return None
        box = "in" if box == "out" else "out"
    if found is None:
        return "is not a message this node holds"
    kind, held_in, with_peer = found
    wanted = " or ".join(sorted(reference.types))
    if received:
        sent = f"sent by {peer}" if box == "in" else f"sent to {peer}"
    else:
        sent = "sent" if box == "out" else "received"
    if kind not in reference.types or held_in != box:
        named = kind or "relayed message"
        return f"must name a {wanted} {sent} here; it names a {named} ({held_in})"
    if reference.same_peer and with_peer != peer:
        if received:
            return f"must name a {wanted} {sent}; it was exchanged with {with_peer}"
        to = "to" if box == "out" else "from"
        return f"must name a {wanted} {sent} {to} {peer}; it was {sent} {to} {with_peer}"
    return None


def check_response(request: MessageType, response: Response) -> None:
    """`check_answer` for a whole response: its status, and a preservation until the MLA
    decision only in answer to the MLA notice (before the MLA request, 29(7) asks for a
    date at least 60 days on). BodyError naming the field."""
    check_answer(request, response.status)
    if response.until_mla_decision and request is not MessageType.MLA_NOTICE:
        raise BodyError(
            "until_mla_decision",
            f"answers an mla_notice only (the MLA request received); a {request} is"
            " preserved until a date (preserved_until)",
        )


def check_answer(request: MessageType, status: ResponseStatus) -> None:
    """Return None if a `request` may be answered `status`; BodyError on `status` naming
    the answers it may have (a `preserved` to a `locate` would start a preservation clock
    for data nobody was asked to preserve)."""
    lawful = LAWFUL_ANSWERS.get(request, frozenset())
    if status not in lawful:
        allowed = ", ".join(sorted(lawful)) or "none: it is not a request"
        raise BodyError(
            "status", f"{status} does not answer a {request} request (its answers: {allowed})"
        )


def follow_up_problem(action: FollowUpAction, request: MessageType | None) -> str | None:
    """Why a follow-up's `action` cannot be said of a `request` of that type (None: it can):
    only preserved data can be released."""
    if action is FollowUpAction.RELEASE and request not in _PRESERVATIONS:
        return (
            f"release is for a preservation or an MLA notice (the data preserved); {request}"
            " requests are withdrawn (action withdraw)"
        )
    return None


_PRESERVATIONS: Final = frozenset({MessageType.PRESERVATION, MessageType.MLA_NOTICE})


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The answer to a request; what it must carry depends on `status`: `preserved_until`
    when preserved or partially_preserved (`provider_reference` then optional), or, for
    preserved in answer to an MLA notice, `until_mla_decision` with `mla_received_on`;
    `refusal_ground` when refused, `missing` when needs_info, `held_in` when held_elsewhere,
    `transferred_to` when transferred, `preserved` (what was kept) when partially_preserved
    (each refused with any other status; `expected_by` optional with transferred and
    awaiting_order); a `note` saying the risk for risk_notice, which condition cannot be
    met for conditions_not_met, what was done for partially_completed."""

    message_type: ClassVar[MessageType] = MessageType.RESPONSE

    in_reply_to: Ref
    status: ResponseStatus
    case_ref: str | None = None
    note: Text | None = None
    preserved_until: FullDate | None = None
    # Budapest 29(7): once the MLA request is received, the data stays preserved until it
    # is decided, with no date: the answer to an MLA notice says so, and on which day the
    # requested Party received the MLA request (its clock runs from there, not from the
    # requester's notice that it was sent).
    until_mla_decision: bool | None = None
    mla_received_on: FullDate | None = None
    provider_reference: str | None = None
    # What the provider did, as the requested Party knows it: when the order reached it,
    # and until when it keeps the data (its own date may differ from preserved_until).
    provider_served_at: DateTime | None = None
    provider_keeps_until: FullDate | None = None
    refusal_ground: RefusalGround | None = None
    missing: Text | None = None
    held_in: Country | None = None  # held_elsewhere: the State where the data is held
    preserved: PreservedPart | None = None  # partially_preserved: what was kept
    transferred_to: str | None = None  # transferred: the competent authority (35(2)(b))
    # transferred, awaiting_order: when a final answer can be expected; the response
    # deadline moves to the end of that day (UTC), on both sides.
    expected_by: FullDate | None = None
    attachments: Attachments | None = None  # files: what was disclosed, an order

    rules: ClassVar[tuple[When, ...]] = (
        When("preserved_until", "status", _PRESERVED, required=False),  # see __post_init__
        When("until_mla_decision", "status", (ResponseStatus.PRESERVED,), required=False),
        When("provider_reference", "status", _PRESERVED, required=False),  # optional even then
        When("provider_served_at", "status", _PRESERVED, required=False),
        When("provider_keeps_until", "status", _PRESERVED, required=False),
        When("refusal_ground", "status", (ResponseStatus.REFUSED,)),
        When("missing", "status", (ResponseStatus.NEEDS_INFO,)),
        When("held_in", "status", (ResponseStatus.HELD_ELSEWHERE,)),
        When(
            "preserved",
            "status",
            (ResponseStatus.PARTIALLY_PRESERVED,),
            problem="required when status is partially_preserved: the identifiers and"
            " categories that were preserved",
        ),
        When("transferred_to", "status", (ResponseStatus.TRANSFERRED,)),
        When("expected_by", "status", _HANDED_ON, required=False),
        # Budapest 29(6): the requested Party says why preservation would not ensure the
        # data's availability or would prejudice the investigation; 28(3): which condition
        # it cannot meet. Either way the requester decides on it.
        When(
            "note",
            "status",
            (ResponseStatus.RISK_NOTICE, ResponseStatus.CONDITIONS_NOT_MET),
            only=False,
            problem="required when status is risk_notice or conditions_not_met: the risk"
            " (Budapest 29(6)) or the condition that cannot be met (28(3)), so that the"
            " requester can decide",
        ),
        When(
            "note",
            "status",
            (ResponseStatus.PARTIALLY_COMPLETED,),
            only=False,
            problem="required when status is partially_completed: what was done, and what"
            " could not be",
        ),
    )

    def __post_init__(self) -> None:
        _check_rules(self)
        if self.until_mla_decision is False:
            raise BodyError("until_mla_decision", "must be true, or left out")
        if self.until_mla_decision:
            if self.preserved_until is not None:
                raise BodyError(
                    "preserved_until",
                    "not allowed with until_mla_decision: the data is kept until the decision",
                )
            if self.mla_received_on is None:
                raise BodyError(
                    "mla_received_on",
                    "required with until_mla_decision: the day the MLA request was received"
                    " (Budapest 29(7))",
                )
        elif self.mla_received_on is not None:
            raise BodyError("mla_received_on", "only with until_mla_decision")
        elif self.status in _PRESERVED and self.preserved_until is None:
            raise BodyError(
                "preserved_until",
                f"required when status is {self.status} (or, answering an MLA notice,"
                " until_mla_decision with mla_received_on)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowUp:
    """The requester's word on its own request (`follows`): `information` supplies what a
    needs_info answer asked for (the deadlines keep running); `proceed` asks for execution
    despite a risk notice (Budapest 29(6)); `withdraw` ends the request, with its reason in
    `note`; `release` tells the requested Party a preservation is no longer needed."""

    message_type: ClassVar[MessageType] = MessageType.FOLLOW_UP

    follows: Ref
    action: FollowUpAction
    case_ref: str | None = None
    information: Text | None = None
    note: Text | None = None
    attachments: Attachments | None = None  # files: the order asked for, more logs

    rules: ClassVar[tuple[When, ...]] = (
        When("information", "action", (FollowUpAction.INFORMATION,)),
        When(
            "note",
            "action",
            (FollowUpAction.WITHDRAW,),
            only=False,
            problem="required when action is withdraw: the reason the request is withdrawn",
        ),
    )

    def __post_init__(self) -> None:
        _check_rules(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentPart:
    """Part `part` of file `attachment` of message `of`: the bytes (base64url) that the
    message's `attachments` names by size and SHA-256 (network/core/attachments.py)."""

    message_type: ClassVar[MessageType] = MessageType.ATTACHMENT_PART

    of: Ref
    attachment: Annotated[int, _Int(low=0, high=MAX_ATTACHMENTS - 1)]
    part: Annotated[int, _Int(low=0, high=MAX_PARTS - 1)]
    data: PartData


Body: TypeAlias = (
    Preservation
    | TrafficDisclosure
    | MlaNotice
    | TechnicalAdvice
    | LegalInformation
    | Evidence
    | Locate
    | Emergency
    | Acknowledgement
    | Response
    | FollowUp
    | AttachmentPart
)

BODY_TYPES: Mapping[MessageType, type[Body]] = MappingProxyType(
    {
        cls.message_type: cls
        for cls in (
            Preservation,
            TrafficDisclosure,
            MlaNotice,
            TechnicalAdvice,
            LegalInformation,
            Evidence,
            Locate,
            Emergency,
            Acknowledgement,
            Response,
            FollowUp,
            AttachmentPart,
        )
    }
)
assert set(BODY_TYPES) == set(MessageType), "every message type needs a body"


# --- Public functions ---


# By value, for a dict lookup per request (building the enum's set each time was not free).
_MESSAGE_TYPES: Final[Mapping[str, MessageType]] = {t.value: t for t in MessageType}
_PRIORITIES: Final[Mapping[str, Priority]] = {p.value: p for p in Priority}


def parse_body(message_type: MessageType | str, value: object) -> Body:
    """Validate an untrusted JSON body of the given type and build its typed record.

    Raises BodyError naming the first bad field (field `type` for an unknown
    message type, an empty field when the body itself is not an object).
    """
    kind = _MESSAGE_TYPES.get(message_type) if isinstance(message_type, str) else None
    if kind is None:
        raise BodyError("type", f"must be one of: {_choices(MessageType)}")
    return _record_from(BODY_TYPES[kind], value, "")


def check_priority(message_type: MessageType, priority: Priority) -> None:
    """Return None if a `message_type` may go at `priority`; BodyError on `priority` for an
    emergency sent `routine` (a risk to life or safety is never left for the day's
    routine: it would wait hours behind everything else, and its deadlines with it)."""
    if message_type is MessageType.EMERGENCY and priority is Priority.ROUTINE:
        raise BodyError("priority", "an emergency request is flash or urgent, never routine")


def parse_recipient(to: object) -> NodeId:
    """A recipient's id as an officer gives it; BodyError on `to` if it is not one."""
    if not is_node_id(to):
        raise BodyError("to", "must be a contact point id (ISO 3166-1 alpha-3, e.g. DEU)")
    return NodeId(str(to))


def parse_request(
    to: object, message_type: object, priority: object, body: object
) -> tuple[NodeId, MessageType, Priority, Body]:
    """Validate what an officer sends (`POST /api/messages`, `cpn send`) and type it.

    The node checks a request with this before sealing it, and `cpn send` before
    sending it, so both refuse the same requests naming the same field. Raises
    BodyError naming `to`, `type`, `priority` or `body.<field>`. Whether `to` is
    in the roster is for the node to say.
    """
    recipient = parse_recipient(to)
    kind = _MESSAGE_TYPES.get(message_type) if isinstance(message_type, str) else None
    if kind is None:
        raise BodyError("type", f"must be one of: {_choices(MessageType)}")
    if kind is MessageType.ATTACHMENT_PART:
        raise BodyError("type", "attachment parts are sent by the node, with their message")
    urgency = _PRIORITIES.get(priority) if isinstance(priority, str) else None
    if urgency is None:
        raise BodyError("priority", f"must be one of: {_choices(Priority)}")
    check_priority(kind, urgency)
    if not isinstance(body, dict):
        raise BodyError("body", "must be an object")
    try:
        typed = parse_body(kind, body)
    except BodyError as exc:
        raise BodyError(f"body.{exc.field}" if exc.field else "body", exc.problem) from None
    return recipient, kind, urgency, typed


def body_to_json(body: Body) -> dict[str, Any]:
    """The JSON model of `body`: None fields omitted, enums as (str) members, tuples as lists."""
    result = _to_json(body)
    assert isinstance(result, dict)
    return result


def body_type(body: Body) -> MessageType:
    """The message type `body` is the body of."""
    return body.message_type


def describe_types() -> dict[str, Any]:
    """Every body type as JSON, for clients that build forms: what `parse_body` checks.

    `{type: {"title", "fields": [field, ...], "rules": [...]}}`, where a field is
    `{"name", "kind", "required", ...}` with `kind` one of line, text, integer,
    boolean, choice (with `choices`), record (with `title`, `fields`, `rules`)
    and list (with `items`, `min_items`, `max_items`, `unique`); lines and text
    carry `max_length` (in bytes of UTF-8) and a `format` (email, date, date-time, message-id,
    time-zone, language) when their shape is checked; integers `min` and `max`.
    A rule is `{"name", "on", "values", "required", "only"}` (see `When`).
    """
    return {str(t): _describe_record(cls) for t, cls in BODY_TYPES.items()}


def _describe_record(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls, include_extras=True)
    fields = []
    for field in dataclasses.fields(cls):
        required = field.default is dataclasses.MISSING
        hint = hints[field.name]
        if not required:
            (hint,) = (arg for arg in get_args(hint) if arg is not NoneType)
        fields.append({"name": field.name, "required": required, **_describe_hint(hint)})
    doc = (cls.__doc__ or "").strip().splitlines()
    return {
        "title": doc[0] if doc else cls.__name__,
        "fields": fields,
        "rules": [
            {
                "name": rule.name,
                "on": rule.on,
                "values": [str(v) for v in rule.values],
                "required": rule.required,
                "only": rule.only,
            }
            for rule in getattr(cls, "rules", ())
        ],
    }


def _describe_hint(hint: Any) -> dict[str, Any]:
    hint, rule = _rule_of(hint)
    if hint is str:
        text: _Str = rule or _Str()
        described: dict[str, Any] = {
            "kind": "text" if text.multiline else "line",
            "max_length": text.max_len,
        }
        if text.format:
            described["format"] = text.format
        return described
    if hint is bool:
        return {"kind": "boolean"}
    if hint is int:
        bounds: _Int = rule or _Int()
        return {"kind": "integer", "min": bounds.low, "max": bounds.high}
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return {"kind": "choice", "choices": [member.value for member in hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return {"kind": "record", **_describe_record(hint)}
    if get_origin(hint) is tuple:
        items: _Items = rule or _Items()
        return {
            "kind": "list",
            "items": _describe_hint(get_args(hint)[0]),
            "min_items": items.low,
            "max_items": items.high,
            "unique": items.unique,
        }
    raise TypeError(f"bodies: cannot describe {hint!r}")


def json_schemas(ref: str = "#/components/schemas/") -> dict[str, dict[str, Any]]:
    """The JSON Schema (2020-12) of every body and of the records inside them, by class
    name, each nested record referred to as `{ref}<Name>`: derived from the same type
    hints and field rules `parse_body` applies. Cross-field rules (`extends` with
    `status`, a response's fields per `status`) are in each record's description;
    `parse_body` checks them and names the field.
    """
    schemas: dict[str, dict[str, Any]] = {}
    pending: list[type] = list(BODY_TYPES.values())
    while pending:
        cls = pending.pop()
        if cls.__name__ not in schemas:
            schemas[cls.__name__] = _record_schema(cls, ref, pending)
    return dict(sorted(schemas.items()))


def _record_schema(cls: type, ref: str, pending: list[type]) -> dict[str, Any]:
    hints = get_type_hints(cls, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if field.default is dataclasses.MISSING:
            required.append(field.name)
            properties[field.name] = _hint_schema(hint, ref, pending)
        else:  # `X | None = None`: absent or null
            (hint,) = (arg for arg in get_args(hint) if arg is not NoneType)
            properties[field.name] = {"anyOf": [_hint_schema(hint, ref, pending), {"type": "null"}]}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    doc = cls.__doc__ or ""
    if doc and not doc.startswith(f"{cls.__name__}("):  # not dataclass's generated signature
        schema["description"] = " ".join(doc.split())
    return schema


def _hint_schema(hint: Any, ref: str, pending: list[type]) -> dict[str, Any]:
    """The JSON Schema of one type hint; mirrors `_compile`."""
    hint, rule = _rule_of(hint)
    if hint is str:
        text: _Str = rule or _Str()
        return {"type": "string", "minLength": 1, "maxLength": text.max_len, **dict(text.schema)}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        limits: _Int = rule or _Int()
        return {"type": "integer", "minimum": limits.low, "maximum": limits.high}
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return {"type": "string", "enum": [member.value for member in hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        pending.append(hint)
        return {"$ref": f"{ref}{hint.__name__}"}
    if get_origin(hint) is tuple:
        items: _Items = rule or _Items()
        schema: dict[str, Any] = {
            "type": "array",
            "items": _hint_schema(get_args(hint)[0], ref, pending),
            "minItems": items.low,
            "maxItems": items.high,
        }
        if items.unique:
            schema["uniqueItems"] = True
        return schema
    raise TypeError(f"bodies: no schema for {hint!r}")


# --- The converter, driven by the records' type hints ---
#
# Each type hint is compiled once into a function (value, path) -> typed value,
# so parsing a body costs a few dict lookups and checks per field, not a walk
# through `typing` per field.

_T = TypeVar("_T")
_Converter = Callable[[object, str], Any]
_CONVERTERS: dict[Any, _Converter] = {}
_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _record_from(cls: type[_T], value: object, path: str) -> _T:
    result: _T = _converter(cls)(value, path)
    return result


def _converter(hint: Any) -> _Converter:
    conv = _CONVERTERS.get(hint)
    if conv is None:
        conv = _CONVERTERS[hint] = _compile(hint)
    return conv


def _rule_of(hint: Any) -> tuple[Any, Any]:
    """A type hint without `Annotated` or NewType (such as MessageId) around it, and the
    rule `Annotated` attached (None if none): what validation, forms and schemas read."""
    rule: Any = None
    if get_origin(hint) is Annotated:
        hint, rule = get_args(hint)
    return getattr(hint, "__supertype__", hint), rule


def _compile(hint: Any) -> _Converter:
    hint, rule = _rule_of(hint)
    if hint is str:
        return _string_converter(rule or _Str())
    if hint is bool:
        return _boolean
    if hint is int:
        int_rule: _Int = rule or _Int()
        return lambda value, path: _integer(value, path, int_rule)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return _enum_converter(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _record_converter(hint)
    if get_origin(hint) is tuple:
        item = _converter(get_args(hint)[0])
        items_rule: _Items = rule or _Items()
        return lambda value, path: _array(item, value, path, items_rule)
    raise TypeError(f"bodies: no converter for {hint!r}")  # a bug here, not in the input


def _record_converter(cls: type) -> _Converter:
    hints = get_type_hints(cls, include_extras=True)
    # (name, type hint, required), in declaration order.
    spec: list[tuple[str, Any, bool]] = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        required = field.default is dataclasses.MISSING
        if not required:  # `X | None = None`
            (hint,) = (arg for arg in get_args(hint) if arg is not NoneType)
        spec.append((field.name, hint, required))
    names = frozenset(name for name, _, _ in spec)
    # The fields' converters, compiled at the first use (records may refer to records
    # defined later) and called directly from then on.
    fields: list[tuple[str, _Converter, bool]] | None = None

    def convert(value: object, path: str) -> Any:
        nonlocal fields
        if fields is None:
            fields = [(name, _converter(hint), required) for name, hint, required in spec]
        if not isinstance(value, dict):
            raise BodyError(path, f"must be an object, got {_kind(value)}")
        if not names.issuperset(value):
            unknown = next(key for key in value if key not in names)
            raise BodyError(_join(path, str(unknown)), "unknown field")
        kwargs: dict[str, Any] = {}
        for name, conv, required in fields:
            item = value.get(name)
            if item is not None:
                kwargs[name] = conv(item, f"{path}.{name}" if path else name)
            elif required:
                if name not in value:
                    raise BodyError(_join(path, name), "required field is missing")
                kwargs[name] = conv(item, _join(path, name))
        try:
            return cls(**kwargs)
        except BodyError as exc:  # a cross-field rule, named relative to this record
            raise BodyError(_join(path, exc.field), exc.problem) from None

    return convert


def _enum_converter(enum: type[StrEnum]) -> _Converter:
    members = {member.value: member for member in enum}

    def convert(value: object, path: str) -> Any:
        if not isinstance(value, str):
            raise BodyError(path, f"must be a string, got {_kind(value)}")
        member = members.get(value)
        if member is None:
            raise BodyError(path, f"must be one of: {_choices(enum)}")
        return member

    return convert


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise BodyError(path, f"must be a boolean, got {_kind(value)}")
    return value


def _string_converter(rule: _Str) -> _Converter:
    max_len, check = rule.max_len, rule.check
    bad = _BAD_IN_TEXT if rule.multiline else _BAD_IN_LINE
    what = (
        "control characters other than newline and tab"
        if rule.multiline
        else "line breaks, control characters or bidirectional formatting characters"
    )

    def convert(value: object, path: str) -> str:
        if not isinstance(value, str):
            raise BodyError(path, f"must be a string, got {_kind(value)}")
        # Bytes, as the body's cap counts them: Cyrillic, Arabic or Chinese text takes two
        # or three bytes a character, and must meet its field's limit before the body's.
        if 4 * len(value) > max_len:  # else even four bytes a character would fit
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > max_len:
                chars = f" ({len(value)} characters)" if size != len(value) else ""
                raise BodyError(
                    path, f"must be at most {max_len} bytes in UTF-8, got {size}{chars}"
                )
        if not value or value.isspace():
            raise BodyError(path, "must not be empty")
        if bad.search(value):
            raise BodyError(path, f"must not contain {what}")
        if check is not None and (problem := check(value)):
            raise BodyError(path, problem)
        return value

    return convert


def _integer(value: object, path: str, rule: _Int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BodyError(path, f"must be an integer, got {_kind(value)}")
    if value < rule.low:
        raise BodyError(path, f"must be at least {rule.low}")
    if value > rule.high:
        raise BodyError(path, f"must be at most {rule.high}")
    return value


def _array(item: _Converter, value: object, path: str, rule: _Items) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise BodyError(path, f"must be an array, got {_kind(value)}")
    if len(value) < rule.low:
        raise BodyError(path, f"must have at least {rule.low} item{'s' * (rule.low != 1)}")
    if len(value) > rule.high:
        raise BodyError(path, f"must have at most {rule.high} items, got {len(value)}")
    items = tuple(item(entry, f"{path}[{i}]") for i, entry in enumerate(value))
    if rule.unique:
        for i, entry in enumerate(items):
            if entry in items[:i]:
                raise BodyError(f"{path}[{i}]", f"repeats {entry!s}")
    return items


def _to_json(value: object) -> Any:
    encode = _ENCODERS.get(type(value))
    if encode is None:
        encode = _ENCODERS[type(value)] = _record_encoder(type(value))
    return encode(value)


def _record_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    """A record's JSON encoder, planned once from its type hints.

    Strings, integers, booleans and StrEnum members (a str subclass, so JSON
    strings as they are) pass through; records and tuples are converted.
    """
    hints = get_type_hints(cls, include_extras=True)
    plan: list[tuple[str, Callable[[Any], Any] | None]] = []
    for field in dataclasses.fields(cls):
        hint = _bare(hints[field.name])
        convert: Callable[[Any], Any] | None = None
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            convert = _to_json
        elif get_origin(hint) is tuple:
            item = _bare(get_args(hint)[0])
            if isinstance(item, type) and dataclasses.is_dataclass(item):
                convert = _records_to_json
            else:
                convert = list
        plan.append((field.name, convert))

    def encode(record: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, convert in plan:
            item = getattr(record, name)
            if item is not None:
                out[name] = item if convert is None else convert(item)
        return out

    return encode


def _records_to_json(items: tuple[Any, ...]) -> list[Any]:
    return [_to_json(item) for item in items]


def _bare(hint: Any) -> Any:
    """A type hint without `| None`, `Annotated` or NewType around it."""
    if get_origin(hint) is not None and NoneType in get_args(hint):
        (hint,) = (arg for arg in get_args(hint) if arg is not NoneType)
    return _rule_of(hint)[0]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(member.value for member in enum)


def _kind(value: object) -> str:
    """The JSON name of a value's kind, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {str: "string", int: "integer", float: "number", dict: "object", list: "array"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)
