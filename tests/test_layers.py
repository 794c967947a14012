"""The package's layers: each imports only the layers below it, and the core does no I/O.

    network/core   pure: records, bodies, crypto, envelope, roster, routing, lifecycle,
                   deadlines, protocol, tlog, oidc (standard library, cryptography, rfc8785,
                   orjson, joserfc: JOSE is bytes in, claims out)
    network/node   one node at run time (core; aiosqlite, websockets, aiohttp's client,
                   uvloop)
    network/api    the HTTP API (core, node; aiohttp, prometheus-client)
    network/cli    the commands (everything; rich)

and each third-party library is imported in one module only, so that a change of
library, suite or schema is a change of one file.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "network"

LAYERS = ("core", "node", "api", "cli")
# What each layer's modules may import from the project (besides themselves).
MAY_IMPORT = {
    "core": {"core"},
    "node": {"core", "node"},
    "api": {"core", "node", "api"},
    "cli": {"core", "node", "api", "cli"},
}
# The standard library's I/O, concurrency and clock: never in the core, which takes bytes,
# records and `now` and returns records, bytes or decisions.
CORE_FORBIDDEN_STDLIB = {
    "asyncio",
    "concurrent",
    "multiprocessing",
    "os.path",
    "pathlib",
    "selectors",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "threading",
    "time",
    "urllib",
}
# Each third-party library behind one module (or a few, named), per layer.
THIRD_PARTY = {
    "cryptography": {"core/crypto.py"},
    "nacl": {"core/crypto.py"},
    "rfc8785": {"core/records.py"},
    "orjson": {"core/records.py"},
    "aiosqlite": {"node/store.py"},
    "websockets": {"node/links.py", "node/conformance.py"},
    "uvloop": {"node/runner.py"},
    "aiohttp": {"node/alerts.py", "api/web.py", "api/site.py", "api/oidc.py", "cli/client.py"},
    "fido2": {"node/passkeys.py"},
    "joserfc": {"core/oidc.py"},
    "prometheus_client": {"api/metrics.py"},
    "pkcs11": {"node/hsm.py"},
    "rich": {"cli/views.py", "cli/audit.py", "cli/conformance.py"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, absolute, wherever in the file (functions included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{path}: relative import"
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_the_layers_below_it(path: Path) -> None:
    layer = _layer(path)
    assert layer in LAYERS, f"{path}: outside the four layers"
    reached = {
        name.split(".")[1]
        for name in _imports(path)
        if name.startswith("network.") and name.split(".")[1] in LAYERS
    }
    assert reached <= MAY_IMPORT[layer], (
        f"{path} ({layer}) reaches up into {reached - MAY_IMPORT[layer]}"
    )


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if _layer(p) == "core"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_core_does_no_io(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        if name.startswith("network.") or top == "__future__":
            continue
        if top in sys.stdlib_module_names:
            bad = {f for f in CORE_FORBIDDEN_STDLIB if name == f or name.startswith(f + ".")}
            assert not bad, f"{path} imports {name}: the core takes bytes and `now`, not I/O"
        else:
            assert top in {"cryptography", "nacl", "rfc8785", "orjson", "joserfc"}, (
                f"{path} imports {name}"
            )


@pytest.mark.parametrize("library", sorted(THIRD_PARTY))
def test_each_library_is_behind_its_modules(library: str) -> None:
    users = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if any(n == library or n.startswith(library + ".") for n in _imports(p))
    }
    assert users <= THIRD_PARTY[library], f"{library} imported by {users - THIRD_PARTY[library]}"
