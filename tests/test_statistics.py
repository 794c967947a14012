"""The yearly statistics (issue 20, item 7): the pure computation on requests made by hand,
then on real nodes' stores through `cpn stats` and GET /api/statistics."""

from __future__ import annotations

import csv
import datetime
import io
import json
from pathlib import Path

import pytest

from network.node.statistics import Answer, Request, compute
from network.samples import sample_body
from tests.harness import Network, cpn
from tests.test_cases import in_days

pytestmark = pytest.mark.timeout(180)

MIN = 60_000
T0 = 1_798_761_600_000  # 2027-01-01T00:00:00Z


def request(n: int, **fields: object) -> Request:
    base: dict[str, object] = {
        "id": f"r{n}",
        "box": "out",
        "peer": "DEU",
        "type": "preservation",
        "priority": "urgent",
        "created": T0 + n * MIN,
    }
    return Request(**{**base, **fields})  # type: ignore[arg-type]


def test_times_count_to_the_first_final_answer_by_nearest_rank() -> None:
    requests = [
        request(i, receipt=T0 + i * MIN + (i + 1) * 1000, answers=(
            Answer(T0 + i * MIN + 2 * MIN),  # acknowledged
            Answer(T0 + i * MIN + 3 * MIN, "needs_info"),  # interim: the wait goes on
            Answer(T0 + i * MIN + (10 + i) * MIN, "preserved"),
        ))
        for i in range(10)
    ]  # fmt: skip

    sent = compute(requests, year=2027, node="FRA")["sent"]

    assert sent["times"]["receipt"] == {"count": 10, "median_ms": 5000, "p90_ms": 9000}
    assert sent["times"]["acknowledgement"]["median_ms"] == 2 * MIN
    assert sent["times"]["response"] == {"count": 10, "median_ms": 14 * MIN, "p90_ms": 18 * MIN}


def test_outcomes_grounds_extensions_and_what_is_not_a_request() -> None:
    requests = [
        request(1, answers=(Answer(T0 + 2 * MIN, "refused", "sovereignty"),)),
        request(2, answers=(Answer(T0 + 3 * MIN, "refused", "dual_criminality"),)),
        # Answered twice: the last final answer is its outcome.
        request(
            3, answers=(Answer(T0 + 4 * MIN, "preserved"), Answer(T0 + 9 * MIN, "not_possible"))
        ),
        request(4, extends_preservation=True, answers=(Answer(T0 + 5 * MIN, "risk_notice"),)),
        request(5, type="mla_notice", peer="IRL", priority="routine"),
        request(6, box="in", peer="USA", type="locate", priority="flash"),
    ]

    stats = compute(requests, year=2027, node="FRA")
    sent, received = stats["sent"], stats["received"]

    assert sent["requests"] == 5 and received["requests"] == 1
    assert sent["by_type"] == {"mla_notice": 1, "preservation": 4}
    assert sent["by_country"] == {"DEU": 4, "IRL": 1} and received["by_country"] == {"USA": 1}
    assert sent["preservation_outcomes"] == {"not_possible": 1, "refused": 2}
    assert sent["refusals_by_ground"] == {"dual_criminality": 1, "sovereignty": 1}
    assert (sent["extensions"], sent["mla_notices"]) == (1, 1)
    assert "receipt" not in received["times"]  # the receiver returns the receipt at once
    assert received["times"]["response"] == {"count": 0, "median_ms": None, "p90_ms": None}


def test_a_nodes_year_from_its_store_by_command_and_api(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    try:
        network.start("DEU", "FRA")
        refused = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        kept = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        locate = network.send("FRA", "DEU", "locate", sample_body("locate"), "flash")
        for message_id in (refused, kept, locate):
            network.wait_state("DEU", message_id, {"received"})
        answers = {
            refused: {"status": "refused", "refusal_ground": "sovereignty"},
            kept: {"status": "preserved", "preserved_until": in_days(90)},
            locate: {"status": "needs_info", "missing": "the time zone"},
        }
        for message_id, answer in answers.items():
            status, _ = network.api("DEU", "POST", f"/api/messages/{message_id}/reply", answer)
            assert status == 202
        network.wait_state("FRA", kept, {"answered"})
        network.wait_state("FRA", refused, {"answered"})
        network.wait_state("FRA", locate, {"acknowledged"})
        extension = sample_body("preservation", status="extension", extends=kept)
        # Delivered: FRA has taken its receipt, which the statistics count (DEU's
        # `received` came before it, and the API's figures could miss the receipt).
        network.wait_state(
            "FRA", network.send("FRA", "DEU", "preservation", extension), {"delivered"}
        )
        year = str(datetime.datetime.now(datetime.UTC).year)
        status, api = network.api("FRA", "GET", f"/api/statistics?year={year}", token="auditor")
        deu_status, deu = network.api("DEU", "GET", "/api/statistics")
        bad_status, bad = network.api("FRA", "GET", "/api/statistics?year=1999")
    finally:
        network.close()
    command = cpn("stats", "--config", str(network.nodes["FRA"].config), "--year", year, "--json")
    table = cpn("stats", "--config", str(network.nodes["FRA"].config), "--csv", "-")

    assert status == 200 and command.returncode == 0, command.stderr
    assert json.loads(command.stdout) == api
    sent = api["sent"]
    assert sent["requests"] == 4 and sent["by_type"] == {"locate": 1, "preservation": 3}
    assert sent["by_priority"] == {"flash": 1, "urgent": 3}
    assert sent["preservation_outcomes"] == {"preserved": 1, "refused": 1}
    assert sent["refusals_by_ground"] == {"sovereignty": 1}
    assert sent["extensions"] == 1
    assert sent["times"]["receipt"]["count"] == 4
    assert sent["times"]["acknowledgement"]["count"] == 3  # the locate's interim answer too
    assert sent["times"]["response"]["count"] == 2  # but it has no final answer yet
    assert deu_status == 200 and deu["received"]["requests"] == 4
    assert deu["received"]["by_country"] == {"FRA": 4}
    assert bad_status == 400 and bad["field"] == "year", bad
    rows = list(csv.reader(io.StringIO(table.stdout)))
    assert rows[0] == ["direction", "figure", "key", "value"]
    assert ["sent", "refusals_by_ground", "sovereignty", "1"] in rows
