"""Feature flags: typed sources, precedence, reload, rejection of bad input, .env.example."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent_runtime import errors, flags
from agent_runtime.events import FlagsReloaded
from agent_runtime.flags import ENV_FILE, Flags, FlagStore, env_name

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def test_defaults_are_fail_safe() -> None:
    """With no file and no variables every resilience layer is on and rollback is automatic."""
    current = FlagStore(environ={}).current()
    assert current == Flags()
    assert current.retry_enabled
    assert current.breaker_enabled
    assert current.limiter_enabled
    assert current.fallback_enabled
    assert current.workspace_auto_rollback


def test_toml_file(tmp_path: Path) -> None:
    """A TOML file sets typed flags."""
    path = tmp_path / "flags.toml"
    path.write_text("breaker_enabled = false\nsandbox_warm_pool_size = 4\n")
    current = FlagStore(path, environ={}).current()
    assert current.breaker_enabled is False
    assert current.sandbox_warm_pool_size == 4
    assert current.retry_enabled is True


def test_json_file(tmp_path: Path) -> None:
    """A JSON file works the same way."""
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"limiter_enabled": False}))
    assert FlagStore(path, environ={}).current().limiter_enabled is False


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("false", False), ("0", False), ("No", False), ("off", False), ("TRUE", True), ("1", True)],
)
def test_environment_booleans(raw: str, expected: bool) -> None:
    """AGENT_RUNTIME_FLAG_<NAME> accepts the usual spellings of booleans."""
    store = FlagStore(environ={"AGENT_RUNTIME_FLAG_FALLBACK_ENABLED": raw})
    assert store.current().fallback_enabled is expected


def test_environment_overrides_file(tmp_path: Path) -> None:
    """Environment variables win over the file; the file path comes from the environment."""
    path = tmp_path / "flags.toml"
    path.write_text("retry_enabled = false\nsandbox_warm_pool_size = 3\n")
    environ = {ENV_FILE: str(path), "AGENT_RUNTIME_FLAG_SANDBOX_WARM_POOL_SIZE": " 7 "}
    current = FlagStore(environ=environ).current()
    assert current.retry_enabled is False
    assert current.sandbox_warm_pool_size == 7


def test_empty_file_variable_means_no_file() -> None:
    """AGENT_RUNTIME_FLAGS_FILE= (empty, as in .env.example) reads no file."""
    store = FlagStore(environ={ENV_FILE: ""})
    assert store.current() == Flags()
    assert store.source == "environment"


def test_reload_without_restart(tmp_path: Path, recorder) -> None:
    """Editing the file and calling reload() changes the flags in force."""
    path = tmp_path / "flags.toml"
    path.write_text("breaker_enabled = true\n")
    store = FlagStore(path, environ={})
    assert store.current().breaker_enabled is True
    path.write_text("breaker_enabled = false\n")
    assert store.current().breaker_enabled is True  # nothing changes until reload
    assert store.reload().breaker_enabled is False
    assert store.current().breaker_enabled is False
    events = recorder.of(FlagsReloaded)
    assert [e.ok for e in events] == [True, True]
    assert events[-1].source == f"{path} + environment"


def test_bad_file_is_rejected_and_old_flags_stay(tmp_path: Path, recorder) -> None:
    """A syntax error is rejected with a clear error; the previous flags stay in force."""
    path = tmp_path / "flags.toml"
    path.write_text("limiter_enabled = false\n")
    store = FlagStore(path, environ={})
    before = store.current()
    path.write_text("limiter_enabled = = nope\n")
    with pytest.raises(errors.FlagsError) as caught:
        store.reload()
    assert "is not valid TOML" in str(caught.value)
    assert "line 1" in str(caught.value)
    assert caught.value.source == str(path)
    assert store.current() is before
    assert store.current().limiter_enabled is False
    failed = recorder.of(FlagsReloaded)[-1]
    assert not failed.ok
    assert failed.error == caught.value.message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("retry_enabld = false\n", "'retry_enabld' is not a known flag"),
        ('retry_enabled = "no"\n', "must be a bool, got str 'no'"),
        ("sandbox_warm_pool_size = true\n", "must be a int, got bool"),
        ("sandbox_warm_pool_size = 2.5\n", "must be a int, got float"),
    ],
)
def test_bad_values_in_file(tmp_path: Path, content: str, needle: str) -> None:
    """Unknown names and wrong types are rejected, naming the flag."""
    path = tmp_path / "flags.toml"
    path.write_text(content)
    with pytest.raises(errors.FlagsError, match=needle):
        FlagStore(path, environ={}).reload()


def test_bad_environment_values() -> None:
    """A bad variable is rejected naming the variable; an unknown one lists the known flags."""
    with pytest.raises(errors.FlagsError) as caught:
        FlagStore(environ={"AGENT_RUNTIME_FLAG_RETRY_ENABLED": "maybe"}).reload()
    assert caught.value.source == "AGENT_RUNTIME_FLAG_RETRY_ENABLED"
    assert "must be a boolean" in str(caught.value)
    with pytest.raises(errors.FlagsError, match="known flags: breaker_enabled"):
        FlagStore(environ={"AGENT_RUNTIME_FLAG_TURBO": "1"}).reload()
    with pytest.raises(errors.FlagsError, match="must be a int"):
        FlagStore(environ={"AGENT_RUNTIME_FLAG_SANDBOX_WARM_POOL_SIZE": "two"}).reload()


def test_missing_and_odd_files(tmp_path: Path) -> None:
    """A missing file, an unknown suffix and a JSON list are clear errors."""
    with pytest.raises(errors.FlagsError, match="does not exist"):
        FlagStore(tmp_path / "nope.toml", environ={}).reload()
    yaml = tmp_path / "flags.yaml"
    yaml.write_text("retry_enabled: false\n")
    with pytest.raises(errors.FlagsError, match=r"name it \*\.toml or \*\.json"):
        FlagStore(yaml, environ={}).reload()
    listed = tmp_path / "flags.json"
    listed.write_text("[1, 2]")
    with pytest.raises(errors.FlagsError, match="must hold a table/object"):
        FlagStore(listed, environ={}).reload()
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(errors.FlagsError, match="is not valid JSON"):
        FlagStore(broken, environ={}).reload()


def test_bad_file_at_first_use_keeps_defaults(tmp_path: Path, caplog) -> None:
    """A bad file at start-up never stops the runtime: defaults stay and the error is logged."""
    path = tmp_path / "flags.toml"
    path.write_text("breaker_enabled = 3\n")
    store = FlagStore(path, environ={})
    with caplog.at_level(logging.ERROR, logger="agent_runtime.flags"):
        assert store.current() == Flags()
    assert "defaults stay in force" in caplog.text
    with pytest.raises(errors.FlagsError):
        store.reload()
    assert store.current() == Flags()


def test_process_wide_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """flags.current() and flags.reload() use the process-wide store and the real environment."""
    monkeypatch.delenv(ENV_FILE, raising=False)
    monkeypatch.setenv("AGENT_RUNTIME_FLAG_LIMITER_ENABLED", "false")
    try:
        assert flags.reload().limiter_enabled is False
        assert flags.current().limiter_enabled is False
        assert flags.default_store().current() is flags.current()
    finally:
        monkeypatch.delenv("AGENT_RUNTIME_FLAG_LIMITER_ENABLED")
        flags.reload()
    assert flags.current().limiter_enabled is True


def test_describe_and_as_dict() -> None:
    """Every flag is described with its type, default and variable."""
    described = {d["name"]: d for d in Flags.describe()}
    assert described["sandbox_warm_pool_size"]["type"] == "int"
    assert described["retry_enabled"]["env"] == "AGENT_RUNTIME_FLAG_RETRY_ENABLED"
    assert all(d["doc"] for d in described.values())
    assert Flags().as_dict() == {name: d["default"] for name, d in described.items()}


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_env_example_lists_every_flag_with_its_default() -> None:
    """.env.example lists every flag variable with its default, and the flags-file variable."""
    listed = _env_example()
    assert ENV_FILE in listed
    assert listed[ENV_FILE] == ""
    for d in Flags.describe():
        assert env_name(d["name"]) in listed, d["name"]
        raw = listed[env_name(d["name"])]
        parsed = FlagStore(environ={env_name(d["name"]): raw}).reload()
        assert getattr(parsed, d["name"]) == d["default"], d["name"]
    assert "AGENT_RUNTIME_TEST_PG_URL" in listed
