"""Node configuration: one TOML file per node (`nodes/FRA.toml`).

Relative paths in a config resolve against the directory holding the file,
so a node runs the same from any working directory. Every refusal is a
ConfigError naming the file and the key.

    id = "FRA"
    [peer]
    listen = "127.0.0.1:7101"        # url defaults to wss://<listen>
    handshake_timeout = 10           # seconds a connecting peer has for each handshake step
    [api]
    listen = "127.0.0.1:8101"
    login_failures = 5               # optional: consecutive refused tokens from one address
    login_penalty = "1s"             #   before it waits this long, doubled with each further
    login_penalty_max = "5m"         #   refused token, at most this long (network/api/throttle.py)
    session_idle = "15m"             # a console session ends after this long without a request,
    session_max = "12h"              #   or this long after sign-in (network/api/sessions.py)
    connection_idle = "30s"          # a connection with no request under way is closed then
    origin = "https://cpn.fra.example"  # where officers open the console (passkeys are bound
                                     #   to its host; default http://localhost:PORT)
    [metrics]                        # optional: Prometheus metrics on a listener of their own,
    listen = "127.0.0.1:9101"        #   never the console's; a bare port means loopback
    [store]
    path = "../var/FRA.sqlite"
    [keys]
    dir = "../keys/FRA"
    roster = "../keys/roster.json"
    keeper = "../keys/authority/keeper.json"
    [links]
    peers = ["DEU", "USA"]
    [delivery]
    retry_seconds = 60               # no end-to-end receipt by then: send again
    [deadlines]                      # optional; durations "30s", "15m", "4h", "10d" or seconds
    preservation_warning = "10d"     # warn this long before a preservation lapses
    preservation_repeat = "1d"
    [deadlines.flash]                # and .urgent, .routine; a key left out keeps its default
    receipt = "5m"
    acknowledgement = "15m"
    response = "4h"
    repeat = "5m"                    # alert again this often while a deadline stays unmet
    [alerts]                         # optional
    webhook = "https://alerts.example/cpn"   # http only to a loopback address
    webhook_timeout = 10             # seconds per attempt
    webhook_retries = 5              # attempts in all
    [restore]                        # optional: after `cpn store restore`
    wait = "30s"                     # for the dialled peers, before explaining the restore
    give_up = "10m"                  # then alert on peers that have not given back
    [auth.oidc]                      # optional: the agency's single sign-on (OpenID Connect)
    issuer = "https://idp.police.example"
    client_id = "cpn-fra"
    client_secret = "..."            #   keep this file mode 0600
    role_claim = "groups"            #   a claim whose values map to roles:
    roles = { "cpn-officers" = "officer", "cpn-auditors" = "auditor" }
    name_claim = "preferred_username"
    name = "Police SSO"              #   what the console's button says
    [approval]                       # optional: four eyes on outgoing requests
    types = ["preservation"]         #   held until an approver (not their composer) approves
    flash = "after"                  #   a flash one goes at once, approved afterwards ("before")
    [attachments]                    # optional: files sent and taken, in MiB
    max_file_mib = 25                #   each file
    max_message_mib = 100            #   all the files of one message
    [retention.closed_requests]      # optional, any number, first match governs a message
    states = ["answered", "withdrawn", "expired", "rejected"]   # not queued or sent
    types = ["preservation"]         # optional: every type
    boxes = ["in", "out"]            # optional: in and out ("relay" too, if named)
    after = "730d"                   # after its last change, its contents are deleted
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from network.core.approval import NO_APPROVAL, ApprovalPolicy
from network.core.attachments import DEFAULT_LIMITS, AttachmentLimits
from network.core.bodies import LAWFUL_ANSWERS
from network.core.deadlines import DEFAULT_DEADLINES, Deadlines, PriorityDeadlines
from network.core.errors import ConfigError
from network.core.oidc import OidcConfig
from network.core.records import MessageType, NodeId, Priority, is_node_id
from network.core.retention import RetentionRule

__all__ = ["NodeConfig", "load_config", "parse_duration", "parse_listen"]

MAX_CONFIG_BYTES = 64 * 1024
MAX_WEBHOOK_TIMEOUT: Final = 300
MAX_WEBHOOK_RETRIES: Final = 20
MAX_HANDSHAKE_TIMEOUT: Final = 120

MAX_RETENTION_DAYS: Final = 100 * 366  # a retention period: up to a century
_RULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")
_UNIT_MS: Final = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# TOML key -> PriorityDeadlines field.
_PRIORITY_KEYS: Final = {
    "receipt": "receipt_ms",
    "acknowledgement": "ack_ms",
    "response": "response_ms",
    "repeat": "repeat_ms",
}
_PRESERVATION_KEYS: Final = {
    "preservation_warning": "preservation_warning_ms",
    "preservation_repeat": "preservation_repeat_ms",
}


DEFAULT_MAX_ADDRESSES: Final = 10_000


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """Failed logins from one address, and the penalty windows they earn (api.throttle);
    how long a console session and an idle connection last (the `[api]` table)."""

    failures: int = 5  # the consecutive failure that opens the first window
    penalty_ms: int = 1_000  # the first window; each further failure doubles it
    max_penalty_ms: int = 300_000  # the cap: 5 minutes
    max_addresses: int = DEFAULT_MAX_ADDRESSES
    forget_ms: int = 3_600_000  # an address quiet for this long starts afresh
    # A console session ends after this long without a request, or this long after sign-in.
    session_idle_ms: int = 15 * 60_000
    session_max_ms: int = 12 * 3_600_000
    # A connection with no request under way (a new one, one between requests, one whose
    # request is still arriving) is closed after this long; a request from someone not
    # signed in is answered within it (a body trickled in to hold the connection is cut);
    # a body from which nothing arrives for this long is cut, whoever sends it.
    connection_idle_ms: int = 30_000


DEFAULT_LOGIN: Final = LoginPolicy()
MAX_CONNECTION_IDLE_MS: Final = 3_600_000


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path
    id: NodeId
    peer_host: str
    peer_port: int
    peer_url: str
    api_host: str
    api_port: int
    store_path: Path
    keys_dir: Path
    roster_path: Path
    keeper_path: Path
    peers: tuple[NodeId, ...]
    retry_seconds: float = 60.0  # a message without an end-to-end receipt goes again after this
    deadlines: Deadlines = DEFAULT_DEADLINES
    webhook_url: str | None = None  # alerts are POSTed here as JSON, when set
    webhook_timeout: float = 10.0  # seconds per attempt
    webhook_retries: int = 5  # attempts in all, the first included
    login: LoginPolicy = DEFAULT_LOGIN  # when repeated failed logins are slowed down
    handshake_timeout: float = 10.0  # seconds for each of TLS, the WebSocket upgrade, the hello
    # GET /metrics is served here, apart from the API and console; None: not served.
    metrics_listen: tuple[str, int] | None = None
    log_format: str = "text"  # [log] format: "text" for people, "json" for a log pipeline
    signing_uri: str | None = None  # [keys] signing: a pkcs11: URI, the key in a module
    restore_wait_ms: int = 30_000  # [restore] wait: for the dialled peers, after a restore
    restore_give_up_ms: int = 600_000  # [restore] give_up: then alert on what is missing
    retention: tuple[RetentionRule, ...] = ()  # [retention.NAME]: when contents are deleted
    attachments: AttachmentLimits = DEFAULT_LIMITS  # [attachments]: file sizes taken
    approval: ApprovalPolicy = NO_APPROVAL  # [approval]: four eyes on outgoing requests
    # [api] origin: where officers open the console; passkeys are bound to its host name.
    api_origin: str = "http://localhost:8101"
    oidc: OidcConfig | None = None  # [auth.oidc]: the agency's single sign-on, if any


def parse_listen(value: object, where: str) -> tuple[str, int]:
    """`host:port` on loopback or any interface; refuses anything else with the key named."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f'{where}: expected "host:port", got {value!r}')
    host, _, port_text = value.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f'{where}: expected "host:port" with a port 0..65535, got {value!r}')
    return host.strip("[]"), int(port_text)


LOG_FORMATS = ("text", "json")


def _restore(section: object, file: Path) -> tuple[int, int]:
    """`[restore] wait, give_up` (ms): how long a restored node waits for its dialled peers
    before it explains the restore, and after how long it alerts on peers that have not
    given back."""
    if section is None:
        return 30_000, 600_000
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: restore: expected a table")
    extra = sorted(set(section) - {"wait", "give_up"})
    if extra:
        raise ConfigError(f"{file}: restore.{extra[0]}: unknown key (expected: wait, give_up)")
    wait = parse_duration(section.get("wait", "30s"), f"{file}: restore.wait")
    give_up = parse_duration(section.get("give_up", "10m"), f"{file}: restore.give_up")
    return wait, give_up


def _log_format(section: object, file: Path) -> str:
    """`[log] format`: "text" (the default) or "json"."""
    if section is None:
        return "text"
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: log: expected a table")
    extra = sorted(set(section) - {"format"})
    if extra:
        raise ConfigError(f"{file}: log.{extra[0]}: unknown key (expected: format)")
    value = section.get("format", "text")
    if value not in LOG_FORMATS:
        raise ConfigError(f"{file}: log.format: expected one of {', '.join(LOG_FORMATS)}")
    return str(value)


def _metrics_listen(section: object, file: Path) -> tuple[str, int] | None:
    """`[metrics] listen`: "host:port", or a port alone for loopback; None when absent."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: metrics: expected a table")
    extra = sorted(set(section) - {"listen"})
    if extra:
        raise ConfigError(f"{file}: metrics.{extra[0]}: unknown key (expected: listen)")
    value = section.get("listen")
    if (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.isdigit()
    ):
        value = f"127.0.0.1:{value}"
    return parse_listen(value, f"{file}: metrics.listen")


def parse_duration(value: object, where: str, *, max_days: int = 365) -> int:
    """A duration in ms from "30s", "15m", "4h", "10d" or whole seconds; more than
    zero and at most `max_days`. `where` names the file and key in the ConfigError."""
    if isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        ms = int(match[1]) * _UNIT_MS[match[2]]
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value * 1000
    else:
        raise ConfigError(
            f'{where}: expected a duration such as "15m" (units s, m, h, d) or whole seconds,'
            f" got {value!r}"
        )
    if ms <= 0:
        raise ConfigError(f"{where}: must be more than zero, got {value!r}")
    if ms > max_days * _UNIT_MS["d"]:
        raise ConfigError(f"{where}: must be at most {max_days} days, got {value!r}")
    return ms


def _approval(section: object, file: Path) -> ApprovalPolicy:
    """`[approval] types = [...], flash = "after" | "before"`."""
    if section is None:
        return NO_APPROVAL
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: approval: expected a table")
    extra = sorted(set(section) - {"types", "flash"})
    if extra:
        raise ConfigError(f"{file}: approval.{extra[0]}: unknown key")
    names = section.get("types")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{file}: approval.types: expected a list of request types")
    if not names:
        raise ConfigError(f"{file}: approval.types: name at least one request type")
    requests = {t.value for t in LAWFUL_ANSWERS}
    for name in names:
        if name not in requests:
            raise ConfigError(
                f"{file}: approval.types: {name!r} is not a request type"
                f" ({', '.join(sorted(requests))})"
            )
    flash = section.get("flash", "after")
    if flash not in ("after", "before"):
        raise ConfigError(
            f'{file}: approval.flash: "after" (a flash request goes at once, approved'
            f' afterwards) or "before", got {flash!r}'
        )
    return ApprovalPolicy(frozenset(MessageType(n) for n in names), flash == "after")


def _auth(section: object, file: Path) -> OidcConfig | None:
    """`[auth.oidc]`: single sign-on through the agency's OpenID Connect provider."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: auth: expected a table")
    extra = sorted(set(section) - {"oidc"})
    if extra:
        raise ConfigError(f"{file}: auth.{extra[0]}: unknown key")
    if "oidc" not in section:
        return None
    return OidcConfig.parse(section["oidc"], f"{file}: auth.oidc")


def _origin(value: object, where: str) -> str:
    """The console's origin (`https://host[:port]`; `http://` only for localhost, which
    browsers treat as secure): WebAuthn binds passkeys to its host name."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an origin such as https://cpn.example.org")
    parts = urlsplit(value)
    local = parts.scheme == "http" and parts.hostname in ("localhost",)
    if (parts.scheme != "https" and not local) or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(
            f"{where}: expected https://HOST[:PORT] (or http://localhost:PORT), got {value!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _attachments(section: object, file: Path) -> AttachmentLimits:
    """`[attachments] max_file_mib, max_message_mib`: what this node sends and takes."""
    if section is None:
        return AttachmentLimits()
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: attachments: expected a table")
    extra = sorted(set(section) - {"max_file_mib", "max_message_mib"})
    if extra:
        raise ConfigError(f"{file}: attachments.{extra[0]}: unknown key")
    mib = 1024 * 1024
    values = {}
    for key, default in (
        ("max_file_mib", AttachmentLimits().max_file // mib),
        ("max_message_mib", AttachmentLimits().max_message // mib),
    ):
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise ConfigError(f"{file}: attachments.{key}: expected 1 to 1024 (MiB), got {value!r}")
        values[key] = value * mib
    if values["max_file_mib"] > values["max_message_mib"]:
        raise ConfigError(f"{file}: attachments.max_file_mib: more than max_message_mib")
    return AttachmentLimits(values["max_file_mib"], values["max_message_mib"])


def _retention(section: object, file: Path) -> tuple[RetentionRule, ...]:
    """`[retention.NAME]` rules, in the file's order (the first that matches a message
    governs it)."""
    if section is None:
        return ()
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: retention: expected a table of rules")
    rules = []
    for name, table in section.items():
        where = f"{file}: retention.{name}"
        if not _RULE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a rule's name is 1 to 64 letters, digits, _ or -")
        if not isinstance(table, dict) or "after" not in table:
            raise ConfigError(f"{where}.after: required (how long after its last change)")
        after = parse_duration(table["after"], f"{where}.after", max_days=MAX_RETENTION_DAYS)
        rules.append(RetentionRule.parse(name, table, where, after))
    return tuple(rules)


def _deadlines(section: object, file: Path) -> Deadlines:
    if section is None:
        return DEFAULT_DEADLINES
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: deadlines: expected a table")
    known = {p.value for p in Priority} | set(_PRESERVATION_KEYS)
    extra = sorted(set(section) - known)
    if extra:
        raise ConfigError(f"{file}: deadlines.{extra[0]}: unknown key")
    per_priority: dict[Priority, PriorityDeadlines] = {}
    for priority in Priority:
        where = f"{file}: deadlines.{priority}"
        table = section.get(priority.value, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        extra = sorted(set(table) - set(_PRIORITY_KEYS))
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: unknown key")
        default = DEFAULT_DEADLINES.per_priority[priority]
        values = {
            attr: parse_duration(table[key], f"{where}.{key}")
            if key in table
            else getattr(default, attr)
            for key, attr in _PRIORITY_KEYS.items()
        }
        chain = ("receipt", "acknowledgement", "response")
        for shorter, longer in itertools.pairwise(chain):
            if values[_PRIORITY_KEYS[longer]] < values[_PRIORITY_KEYS[shorter]]:
                raise ConfigError(
                    f"{where}.{longer}: must not be shorter than deadlines.{priority}.{shorter}"
                )
        per_priority[priority] = PriorityDeadlines(**values)
    preservation = {
        attr: parse_duration(section[key], f"{file}: deadlines.{key}")
        if key in section
        else getattr(DEFAULT_DEADLINES, attr)
        for key, attr in _PRESERVATION_KEYS.items()
    }
    return Deadlines(per_priority=per_priority, **preservation)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _webhook_url(value: object, where: str) -> str:
    """An http(s) URL with a host; plain http only to a loopback address, since
    alerts name messages, priorities and countries."""
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ConfigError(f"{where}: expected an http(s) URL")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigError(f"{where}: the URL holds spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # a bad port raises ValueError
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"{where}: the scheme must be https (or http to loopback), got {parts.scheme!r}"
        )
    if not host:
        raise ConfigError(f"{where}: the URL has no host")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(f"{where}: plain http is allowed only to a loopback address; use https")
    if parts.username is not None or parts.fragment:
        raise ConfigError(f"{where}: the URL may not hold user info or a fragment")
    return value


def _alerts(section: object, file: Path) -> tuple[str | None, float, int]:
    if section is None:
        return None, 10.0, 5
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: alerts: expected a table")
    extra = sorted(set(section) - {"webhook", "webhook_timeout", "webhook_retries"})
    if extra:
        raise ConfigError(f"{file}: alerts.{extra[0]}: unknown key")
    url = (
        _webhook_url(section["webhook"], f"{file}: alerts.webhook")
        if "webhook" in section
        else None
    )
    timeout = section.get("webhook_timeout", 10)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_WEBHOOK_TIMEOUT
    ):
        raise ConfigError(
            f"{file}: alerts.webhook_timeout: expected seconds, more than 0 and at most"
            f" {MAX_WEBHOOK_TIMEOUT}, got {timeout!r}"
        )
    retries = section.get("webhook_retries", 5)
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise ConfigError(f"{file}: alerts.webhook_retries: expected a whole number of attempts")
    if not 1 <= retries <= MAX_WEBHOOK_RETRIES:
        raise ConfigError(
            f"{file}: alerts.webhook_retries: expected 1..{MAX_WEBHOOK_RETRIES}, got {retries}"
        )
    return url, float(timeout), retries


def _login(api: dict[str, Any], file: Path) -> LoginPolicy:
    known = {
        "listen",
        "login_failures",
        "login_penalty",
        "login_penalty_max",
        "session_idle",
        "session_max",
        "origin",
        "connection_idle",
    }
    extra = sorted(set(api) - known)
    if extra:
        raise ConfigError(f"{file}: api.{extra[0]}: unknown key")
    failures = api.get("login_failures", DEFAULT_LOGIN.failures)
    if isinstance(failures, bool) or not isinstance(failures, int) or not 1 <= failures <= 100:
        raise ConfigError(f"{file}: api.login_failures: expected 1..100, got {failures!r}")
    penalty, most = (
        parse_duration(api[key], f"{file}: api.{key}") if key in api else default
        for key, default in (
            ("login_penalty", DEFAULT_LOGIN.penalty_ms),
            ("login_penalty_max", DEFAULT_LOGIN.max_penalty_ms),
        )
    )
    if most < penalty:
        raise ConfigError(f"{file}: api.login_penalty_max: must not be shorter than login_penalty")
    idle, limit = (
        parse_duration(api[key], f"{file}: api.{key}") if key in api else default
        for key, default in (
            ("session_idle", DEFAULT_LOGIN.session_idle_ms),
            ("session_max", DEFAULT_LOGIN.session_max_ms),
        )
    )
    if limit < idle:
        raise ConfigError(f"{file}: api.session_max: must not be shorter than session_idle")
    return LoginPolicy(
        failures=failures,
        penalty_ms=penalty,
        max_penalty_ms=most,
        session_idle_ms=idle,
        session_max_ms=limit,
        connection_idle_ms=_connection_idle(api, file),
    )


def _connection_idle(api: dict[str, Any], file: Path) -> int:
    if "connection_idle" not in api:
        return DEFAULT_LOGIN.connection_idle_ms
    idle = parse_duration(api["connection_idle"], f"{file}: api.connection_idle")
    if not 1_000 <= idle <= MAX_CONNECTION_IDLE_MS:
        raise ConfigError(
            f"{file}: api.connection_idle: expected 1s to 1h, got {api['connection_idle']!r}"
        )
    return idle


def _table(doc: dict[str, Any], key: str, file: Path) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: [{key}] table is missing")
    return value


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: required string is missing or empty")
    return value


def load_config(path: Path) -> NodeConfig:
    """Read and check a node config file; raises ConfigError saying what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config is over {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    base = path.parent
    node_id = doc.get("id")
    if not isinstance(node_id, str) or not is_node_id(node_id):
        raise ConfigError(f"{path}: id: expected an ISO 3166-1 alpha-3 code, got {node_id!r}")
    peer = _table(doc, "peer", path)
    peer_host, peer_port = parse_listen(peer.get("listen"), f"{path}: peer.listen")
    peer_url = peer.get("url", f"wss://{peer_host}:{peer_port}")
    if not isinstance(peer_url, str) or not peer_url.startswith("wss://"):
        raise ConfigError(f"{path}: peer.url: must start with wss://, got {peer_url!r}")
    handshake_timeout = peer.get("handshake_timeout", 10)
    if (
        isinstance(handshake_timeout, bool)
        or not isinstance(handshake_timeout, int | float)
        or not 0 < handshake_timeout <= MAX_HANDSHAKE_TIMEOUT
    ):
        raise ConfigError(
            f"{path}: peer.handshake_timeout: expected seconds, more than 0 and at most"
            f" {MAX_HANDSHAKE_TIMEOUT}, got {handshake_timeout!r}"
        )
    api = _table(doc, "api", path)
    api_host, api_port = parse_listen(api.get("listen"), f"{path}: api.listen")
    login = _login(api, path)
    api_origin = _origin(api.get("origin", f"http://localhost:{api_port}"), f"{path}: api.origin")
    store = _table(doc, "store", path)
    keys = _table(doc, "keys", path)
    links = doc.get("links", {})
    if not isinstance(links, dict):
        raise ConfigError(f"{path}: links: expected a table")
    peers = links.get("peers", [])
    if not isinstance(peers, list) or not all(is_node_id(p) for p in peers):
        raise ConfigError(f"{path}: links.peers: expected a list of alpha-3 codes, got {peers!r}")
    if node_id in peers:
        raise ConfigError(f"{path}: links.peers: a node cannot link to itself")
    delivery = doc.get("delivery", {})
    retry = delivery.get("retry_seconds", 60) if isinstance(delivery, dict) else None
    if isinstance(retry, bool) or not isinstance(retry, int | float) or not 1 <= retry <= 86_400:
        raise ConfigError(f"{path}: delivery.retry_seconds: expected 1..86400 seconds")
    deadlines = _deadlines(doc.get("deadlines"), path)
    webhook_url, webhook_timeout, webhook_retries = _alerts(doc.get("alerts"), path)
    metrics_listen = _metrics_listen(doc.get("metrics"), path)
    log_format = _log_format(doc.get("log"), path)
    restore_wait, restore_give_up = _restore(doc.get("restore"), path)
    retention = _retention(doc.get("retention"), path)
    attachments = _attachments(doc.get("attachments"), path)
    approval = _approval(doc.get("approval"), path)
    oidc = _auth(doc.get("auth"), path)
    signing_uri = keys.get("signing")
    if signing_uri is not None and (
        not isinstance(signing_uri, str) or not signing_uri.startswith("pkcs11:")
    ):
        raise ConfigError(f"{path}: keys.signing: expected a pkcs11: URI (RFC 7512)")
    known = {
        "id",
        "peer",
        "api",
        "metrics",
        "store",
        "keys",
        "links",
        "delivery",
        "deadlines",
        "alerts",
        "log",
        "restore",
        "retention",
        "attachments",
        "approval",
        "auth",
    }
    extra = sorted(set(doc) - known)
    if extra:
        raise ConfigError(f"{path}: {extra[0]}: unknown key")
    where = f"{path}: "

    def resolve(value: str) -> Path:
        return Path(os.path.normpath(base / value))

    return NodeConfig(
        path=path,
        id=NodeId(node_id),
        peer_host=peer_host,
        peer_port=peer_port,
        peer_url=peer_url,
        api_host=api_host,
        api_port=api_port,
        store_path=resolve(_str(store, "path", where + "store")),
        keys_dir=resolve(_str(keys, "dir", where + "keys")),
        roster_path=resolve(_str(keys, "roster", where + "keys")),
        keeper_path=resolve(_str(keys, "keeper", where + "keys")),
        peers=tuple(NodeId(p) for p in peers),
        retry_seconds=float(retry),
        deadlines=deadlines,
        webhook_url=webhook_url,
        webhook_timeout=webhook_timeout,
        webhook_retries=webhook_retries,
        login=login,
        handshake_timeout=float(handshake_timeout),
        metrics_listen=metrics_listen,
        log_format=log_format,
        signing_uri=signing_uri,
        restore_wait_ms=restore_wait,
        restore_give_up_ms=restore_give_up,
        retention=retention,
        attachments=attachments,
        approval=approval,
        api_origin=api_origin,
        oidc=oidc,
    )
