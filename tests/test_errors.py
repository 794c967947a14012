"""The exception tree: one root, unique reasons, and a drawing that matches the classes."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from network.core import errors
from network.core.errors import CpnError, IllegalTransition, LocalError, PeerError
from network.core.lifecycle import OUTBOUND, Event, State, next_state

PACKAGE = Path(errors.__file__).resolve().parent.parent

CLASSES = {
    name: cls
    for name, cls in vars(errors).items()
    if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__
}

# Exception classes allowed outside errors.py, and why.
ELSEWHERE = {
    # The HTTP layer's answer (a status and headers, aiohttp's types), raised and caught
    # inside network/api/web.py: a way out of a handler, not an error anyone else sees.
    ("network/api/web.py", "_Refusal"),
    # A conformance case's verdict (what the node under test answered instead), raised and
    # caught inside network/node/conformance.py: it ends one case, never leaves the runner.
    ("network/node/conformance.py", "_Failed"),
}

# Each name stays importable from where callers imported it before the tree held it.
REEXPORTS = [
    ("network.core.lifecycle", "IllegalTransition"),
    ("network.core.protocol", "HandshakeError"),
    ("network.core.routing", "StaleAnnouncementError"),
    ("network.node.inbound", "HopLimitError"),
    ("network.node.inbound", "LoopError"),
    ("network.node.inbound", "NoSuchRecipientError"),
    ("network.node.inbound", "UnknownReceiptError"),
    ("network.node.store", "StoreError"),
    ("network.node.auditfile", "AuditReadError"),
    ("network.node.events", "HubFullError"),
]

_NODE = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>\w+)(?: \((?P<mixins>[\w, ]+)\))?\s")


def drawn_tree() -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """{class name: (parent drawn above it, stdlib bases in brackets)} from the docstring."""
    doc = errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ") and line.strip()]
    tree: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    stack: list[str] = []  # the names on the path from the root to the line at hand
    for line in lines:
        match = _NODE.match(line + " ")
        assert match is not None, f"not a node of the drawing: {line!r}"
        depth = 0 if line[0] not in "├└│ " else len(match["indent"]) // 4 + 1
        del stack[depth:]
        parent = stack[-1] if stack else None
        mixins = tuple(m.strip() for m in (match["mixins"] or "").split(",") if m.strip())
        tree[match["name"]] = (parent, mixins)
        stack.append(match["name"])
    return tree


def test_every_class_derives_from_the_root() -> None:
    assert CLASSES
    for cls in CLASSES.values():
        assert issubclass(cls, CpnError), cls


def test_all_lists_every_class() -> None:
    assert set(errors.__all__) == set(CLASSES)


def test_reasons_are_unique_short_codes() -> None:
    reasons = {name: cls.reason for name, cls in CLASSES.items()}
    for name, reason in reasons.items():
        assert "reason" in vars(CLASSES[name]), f"{name} inherits its reason"
        assert re.fullmatch(r"[a-z][a-z_]{1,29}", reason), (name, reason)
    assert len(set(reasons.values())) == len(reasons), reasons


def test_the_drawing_matches_the_classes() -> None:
    tree = drawn_tree()
    assert set(tree) == set(CLASSES)
    for name, (parent, mixins) in tree.items():
        cls = CLASSES[name]
        if parent is None:
            assert cls is CpnError
            continue
        assert cls.__bases__[0] is CLASSES[parent], f"{name} is drawn under {parent}"
        assert tuple(base.__name__ for base in cls.__bases__[1:]) == mixins, name


def test_no_exception_class_is_defined_elsewhere() -> None:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        if relative == "network/core/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases]
                if any(b.endswith(("Error", "Exception")) or b in CLASSES for b in bases):
                    found.add((relative, node.name))
    assert found == ELSEWHERE


@pytest.mark.parametrize(("module", "name"), REEXPORTS)
def test_names_stay_importable_where_they_were(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is CLASSES[name]


def test_what_we_did_wrong_is_not_what_a_peer_did() -> None:
    assert not issubclass(LocalError, PeerError)
    assert not issubclass(PeerError, LocalError)
    assert not issubclass(errors.LinkStalledError, PeerError)  # a stall cuts no peer off


def test_an_illegal_transition_is_ours_and_names_the_move() -> None:
    with pytest.raises(IllegalTransition) as caught:
        next_state(OUTBOUND, State.DELIVERED, Event.SEND)
    assert isinstance(caught.value, LocalError)
    assert (caught.value.state, caught.value.event) == (State.DELIVERED, Event.SEND)
    assert caught.value.reason == "illegal_transition"
    assert str(caught.value) == "no transition from delivered on send"


def test_a_reason_given_overrides_the_class_one() -> None:
    assert errors.MalformedError("x", reason="bad_frame").reason == "bad_frame"
    assert errors.MalformedError("x").reason == "malformed"
