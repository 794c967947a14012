"""The failed-login throttle (pure, `now` passed in) and its `[api]` config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from network.api.throttle import DEFAULT_LOGIN, LoginPolicy, LoginThrottle
from network.core.errors import ConfigError
from network.node.config import load_config

POLICY = LoginPolicy(failures=3, penalty_ms=1000, max_penalty_ms=4000, forget_ms=60_000)


def fail(throttle: LoginThrottle, address: str, times: int, now: int = 0) -> list[int | None]:
    return [throttle.failed(address, now) for _ in range(times)]


def test_the_third_failure_opens_a_window_that_doubles_up_to_the_cap() -> None:
    throttle = LoginThrottle(POLICY)

    windows = fail(throttle, "192.0.2.1", 3)
    later = [throttle.failed("192.0.2.1", now) for now in (1000, 3000, 7000, 11_000)]

    assert windows == [None, None, 1000]
    assert later == [2000, 4000, 4000, 4000]


def test_an_address_waits_out_its_window_and_others_do_not_wait() -> None:
    throttle = LoginThrottle(POLICY)
    fail(throttle, "192.0.2.1", 3, now=10_000)

    assert throttle.blocked("192.0.2.1", 10_000) == 1000
    assert throttle.blocked("192.0.2.1", 10_999) == 1
    assert throttle.blocked("192.0.2.1", 11_000) is None
    assert throttle.blocked("192.0.2.2", 10_000) is None


def test_a_success_forgets_the_failures() -> None:
    throttle = LoginThrottle(POLICY)
    fail(throttle, "192.0.2.1", 2)

    throttle.succeeded("192.0.2.1")

    assert fail(throttle, "192.0.2.1", 2) == [None, None]


def test_the_table_is_bounded_dropping_the_oldest_failure() -> None:
    throttle = LoginThrottle(LoginPolicy(failures=2, max_addresses=100))
    throttle.failed("victim", 0)

    for n in range(500):
        throttle.failed(f"198.51.100.{n}", 1 + n)

    assert len(throttle) == 100
    assert throttle.failed("victim", 1000) is None  # counted afresh: its first failure


def test_quiet_addresses_are_forgotten_but_not_inside_a_window() -> None:
    throttle = LoginThrottle(LoginPolicy(failures=1, penalty_ms=1000, forget_ms=10_000))
    throttle.failed("quiet", 0)  # a window until 1000
    throttle.failed("busy", 9_000)

    throttle.failed("new", 12_000)

    assert len(throttle) == 2  # "quiet" went; "busy" (3 s ago) stays
    assert throttle.failed("quiet", 12_000) == 1000  # afresh: its first window again


def _config(tmp_path: Path, api: str) -> Path:
    path = tmp_path / "FRA.toml"
    path.write_text(
        'id = "FRA"\n[peer]\nlisten = "127.0.0.1:7101"\n'
        f'[api]\nlisten = "127.0.0.1:8101"\n{api}'
        '[store]\npath = "s.sqlite"\n'
        '[keys]\ndir = "k"\nroster = "r.json"\nkeeper = "keeper.json"\n'
    )
    return path


def test_config_reads_the_login_policy(tmp_path: Path) -> None:
    config = load_config(
        _config(tmp_path, 'login_failures = 3\nlogin_penalty = 2\nlogin_penalty_max = "1m"\n')
    )
    default = load_config(_config(tmp_path, ""))

    assert (config.login.failures, config.login.penalty_ms, config.login.max_penalty_ms) == (
        3,
        2000,
        60_000,
    )
    assert default.login == DEFAULT_LOGIN


def test_config_reads_how_long_an_api_connection_may_stay_idle(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, 'connection_idle = "2m"\n')).login.connection_idle_ms == (
        120_000
    )
    assert load_config(_config(tmp_path, "")).login.connection_idle_ms == 30_000


@pytest.mark.parametrize(
    ("api", "key"),
    [
        ("login_failures = 0\n", "api.login_failures"),
        ("login_failures = true\n", "api.login_failures"),
        ('login_penalty = "soon"\n', "api.login_penalty"),
        ('login_penalty = "10m"\n', "api.login_penalty_max"),
        ("login_lockout = 5\n", "api.login_lockout"),
        ("connection_idle = 0\n", "api.connection_idle"),
        ('connection_idle = "2h"\n', "api.connection_idle"),
        ('connection_idle = "500ms"\n', "api.connection_idle"),
    ],
)
def test_config_refuses_a_bad_login_policy_naming_the_key(
    tmp_path: Path, api: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(_config(tmp_path, api))


@pytest.mark.parametrize(
    ("metrics", "listen"),
    [
        ("", None),
        ('[metrics]\nlisten = "127.0.0.1:9101"\n', ("127.0.0.1", 9101)),
        ("[metrics]\nlisten = 9101\n", ("127.0.0.1", 9101)),
        ('[metrics]\nlisten = "9101"\n', ("127.0.0.1", 9101)),
    ],
)
def test_config_reads_the_metrics_listener_loopback_by_default(
    tmp_path: Path, metrics: str, listen: tuple[str, int] | None
) -> None:
    path = _config(tmp_path, "")
    path.write_text(path.read_text() + metrics)

    assert load_config(path).metrics_listen == listen


@pytest.mark.parametrize(
    ("metrics", "key"),
    [
        ('[metrics]\nlisten = "nowhere"\n', "metrics.listen"),
        ("[metrics]\nlisten = true\n", "metrics.listen"),
        ('[metrics]\nlisten = "127.0.0.1:9101"\npath = "/m"\n', "metrics.path"),
        ('metrics = "127.0.0.1:9101"\n', "metrics: expected a table"),
    ],
)
def test_config_refuses_a_bad_metrics_listener_naming_the_key(
    tmp_path: Path, metrics: str, key: str
) -> None:
    path = _config(tmp_path, "")
    text = path.read_text()
    path.write_text(metrics + text if not metrics.startswith("[") else text + metrics)

    with pytest.raises(ConfigError, match=key):
        load_config(path)
