"""network.node.auditfile: the CSV export never hands a spreadsheet a formula."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from network.core.auditlog import AuditEntry
from network.node.auditfile import csv_cell, export_entries
from network.node.store import Store

FORMULA_ACTORS = [
    '=HYPERLINK("http://evil.example","click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1",
    "\r=1",
    "'=1",  # an apostrophe of its own: still comes back exactly
]


@pytest.mark.parametrize("value", FORMULA_ACTORS)
def test_a_cell_that_starts_like_a_formula_gets_an_apostrophe(value: str) -> None:
    cell = csv_cell(value)

    assert cell == "'" + value


@pytest.mark.parametrize("value", ["node:FRA", "officer 1", "", "{}", 12, None])
def test_other_cells_are_left_as_they_are(value: object) -> None:
    assert csv_cell(value) == value


async def test_an_exported_formula_is_inert_and_its_leaf_still_recomputes(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite")
    try:
        async with store.transaction(1_700_000_000_000) as tx:
            tx.audit(
                [
                    AuditEntry(actor, "login", None, {"n": i})
                    for i, actor in enumerate(FORMULA_ACTORS)
                ]
            )
    finally:
        await store.close()
    out = io.StringIO()

    export_entries(tmp_path / "s.sqlite", out, "csv")

    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    exported = {row["actor"]: row for row in table if row["action"] == "login"}
    assert set(exported) == {"'" + actor for actor in FORMULA_ACTORS}
    for cell, row in exported.items():
        actor = cell[1:]  # one leading apostrophe dropped gives the value back
        canonical = json.dumps(
            {
                "action": row["action"],
                "actor": actor,
                "detail": json.loads(row["detail"]),
                "message": None,
                "time": int(row["time"]),
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        leaf = hashlib.sha256(b"\x00" + canonical.encode()).digest()
        assert row["leaf_hash"] == base64.b64encode(leaf).decode()
