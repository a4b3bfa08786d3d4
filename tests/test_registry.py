"""Registry: pipelines from plain config, validation, reload keeping unchanged state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from resilient import Fallback, Pipeline, Policy, Retry, Timeout
from resilient.registry import Registry

CONFIG: dict[str, Any] = {
    "pipelines": {
        "payments": [
            {"type": "timeout", "seconds": 10},
            {"type": "retry", "attempts": 3, "backoff": {"type": "constant", "delay": 0}, "on": ["ConnectionError"]},
        ],
        "search": [{"type": "fallback", "value": []}],
    }
}


def test_builds_named_pipelines() -> None:
    registry = Registry(CONFIG)
    assert registry.names == ["payments", "search"]
    assert "payments" in registry
    payments = registry.pipeline("payments")
    assert isinstance(payments, Pipeline)
    assert payments.name == "payments"
    timeout, retry = payments
    assert isinstance(timeout, Timeout)
    assert timeout.seconds == 10
    assert isinstance(retry, Retry)
    assert retry.attempts == 3


async def test_registered_policy_runs_the_pipeline() -> None:
    registry = Registry(CONFIG)
    calls = 0

    @registry.policy("payments")
    async def charge() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "charged"

    assert await charge() == "charged"
    assert calls == 3


async def test_reload_switches_wrapped_functions_and_keeps_unchanged_policies() -> None:
    registry = Registry(CONFIG)
    old_timeout = registry.pipeline("payments")[0]
    calls = 0

    @registry.policy("payments")
    async def charge() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    with pytest.raises(ConnectionError):
        await charge()
    assert calls == 3

    new = json.loads(json.dumps(CONFIG))
    new["pipelines"]["payments"][1]["attempts"] = 5
    registry.configure(new)
    assert registry.pipeline("payments")[0] is old_timeout  # unchanged spec, same object
    calls = 0
    with pytest.raises(ConnectionError):
        await charge()
    assert calls == 5


def test_sync_registered_policy() -> None:
    registry = Registry({"reads": [{"type": "fallback", "value": "default"}]})

    @registry.policy("reads")
    def read() -> str:
        raise OSError

    assert read() == "default"


def test_bad_config_names_the_place_and_changes_nothing() -> None:
    registry = Registry(CONFIG)
    before = registry.pipeline("payments")
    bad = {"payments": [{"type": "timeout", "seconds": 10}, {"type": "retry", "attempts": 0}]}
    with pytest.raises(ValueError, match=r"pipeline 'payments', policy #1 \(retry\): attempts must be an int >= 1"):
        registry.configure(bad)
    assert registry.pipeline("payments") is before
    with pytest.raises(ValueError, match="unknown policy type 'retryy'"):
        registry.configure({"p": [{"type": "retryy"}]})
    with pytest.raises(ValueError, match="unknown exception 'NoSuchError'"):
        registry.configure({"p": [{"type": "retry", "on": ["NoSuchError"]}]})
    with pytest.raises(ValueError, match="is not an exception type"):
        registry.configure({"p": [{"type": "retry", "on": "os.path"}]})
    with pytest.raises(TypeError, match="unexpected keyword"):
        registry.configure({"p": [{"type": "timeout", "seconds": 1, "colour": "red"}]})
    with pytest.raises(ValueError, match="unknown backoff type"):
        registry.configure({"p": [{"type": "retry", "backoff": {"type": "fibonacci"}}]})
    with pytest.raises(TypeError, match="must be a mapping"):
        registry.configure({"p": ["retry"]})
    with pytest.raises(KeyError, match="no pipeline named 'nope'"):
        registry.pipeline("nope")
    with pytest.raises(KeyError):
        registry.policy("nope")


def test_dotted_exception_names_and_custom_types() -> None:
    class Custom(Policy):
        policy_type = "custom"

        def __init__(self, level: int) -> None:
            super().__init__()
            self.level = level

    registry = Registry(
        {"p": [{"type": "retry", "on": ["asyncio.CancelledError", "OSError"]}, {"type": "custom", "level": 3}]},
        policy_types={"custom": Custom},
    )
    retry, custom = registry.pipeline("p")
    assert isinstance(custom, Custom)
    assert custom.level == 3
    assert isinstance(retry, Retry)
    with pytest.raises(TypeError, match="must be callable"):
        Registry(policy_types={"x": 3})  # type: ignore[dict-item]


def test_from_toml_and_json(tmp_path: Path) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(
        "[pipelines]\n"
        'api = [ { type = "timeout", seconds = 5 }, { type = "retry", attempts = 2, '
        'backoff = { type = "exponential", base = 0.1, jitter = "equal" } } ]\n'
    )
    registry = Registry.from_toml(path)
    assert [type(p) for p in registry.pipeline("api")] == [Timeout, Retry]
    assert Registry.from_json(json.dumps(CONFIG)).names == ["payments", "search"]


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT__PAYMENTS__RETRY__ATTEMPTS", "7")
    monkeypatch.setenv("RESILIENT__PAYMENTS__0__SECONDS", "2.5")
    monkeypatch.setenv("RESILIENT__UNKNOWN__RETRY__ATTEMPTS", "9")
    registry = Registry()
    registry.configure(CONFIG, env_prefix="RESILIENT__")
    timeout, retry = registry.pipeline("payments")
    assert isinstance(retry, Retry)
    assert retry.attempts == 7
    assert isinstance(timeout, Timeout)
    assert timeout.seconds == 2.5


def test_status_lists_every_pipeline() -> None:
    status = Registry(CONFIG).status()
    assert set(status) == {"payments", "search"}
    assert status["search"] == [{"type": "fallback"}]


def test_fallback_value_from_config() -> None:
    registry = Registry({"p": [{"type": "fallback", "value": {"items": []}}]})
    (fallback,) = registry.pipeline("p")
    assert isinstance(fallback, Fallback)
    assert fallback.value == {"items": []}
