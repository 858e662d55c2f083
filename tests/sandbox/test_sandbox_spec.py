"""SandboxSpec validation: sizes, allowlist entries, users and limits."""

from __future__ import annotations

import dataclasses

import pytest

from agent_runtime.errors import ConfigurationError
from agent_runtime.sandbox import SandboxSpec, parse_allow, parse_size
from agent_runtime.sandbox.spec import DEFAULT_MEMORY, DEFAULT_USER, format_size, parse_user


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256m", 256 << 20),
        ("1g", 1 << 30),
        ("512K", 512 << 10),
        ("64MiB", 64 << 20),
        ("2gb", 2 << 30),
        ("1.5g", 3 << 29),
        ("4096", 4096),
        (1234, 1234),
    ],
)
def test_parse_size_accepts_docker_style_units(text: str | int, expected: int) -> None:
    """Sizes accept byte counts and binary k/m/g/t units in Docker's spellings."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "12x", "-5m", "m", "0", 0, -1, True, 1.5, "1 2m"])
def test_parse_size_rejects_nonsense_with_help(bad: object) -> None:
    """A bad size names the field and the accepted forms."""
    with pytest.raises(ConfigurationError, match=r"memory .*(256m|positive)"):
        parse_size(bad, name="memory")  # type: ignore[arg-type]


def test_format_size_round_trips() -> None:
    """Sizes format the way Docker spells them."""
    assert format_size(256 << 20) == "256m"
    assert format_size(1 << 30) == "1g"
    assert format_size(1536 << 10) == "1536k"
    assert format_size(1000) == "1000"


def test_spec_defaults_are_hardened_and_offline() -> None:
    """The default spec has no network, a non-root user and bounded resources."""
    spec = SandboxSpec()
    assert spec.allow == ()
    assert spec.user == DEFAULT_USER
    assert spec.uid_gid == (1000, 1000)
    assert spec.memory_bytes == parse_size(DEFAULT_MEMORY)
    assert spec.tmp_bytes < spec.memory_bytes


def test_spec_is_frozen_and_slotted() -> None:
    """Specs are immutable values; changes go through dataclasses.replace."""
    spec = SandboxSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.cpus = 4  # type: ignore[misc]
    assert not hasattr(spec, "__dict__")
    assert dataclasses.replace(spec, cpus=0.5).cpus == 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cpus": 0}, "cpus"),
        ({"cpus": float("nan")}, "cpus"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"pids": 2}, "pids"),
        ({"memory": "1m"}, "6m"),
        ({"disk": "1m"}, "disk"),
        ({"tmp": "1g", "memory": "512m"}, "tmp .* smaller than memory"),
        ({"output_limit": 10}, "output_limit"),
        ({"user": "sandbox"}, "numeric"),
        ({"user": "1000:abc"}, "numeric"),
        ({"env": {"BAD-NAME": "x"}}, "env name"),
        ({"env": {"OK": 1}}, "strings"),
        ({"image": ""}, "image"),
        ({"runtime": ""}, "runtime"),
        ({"allow": "api.example.com"}, "list of entries"),
    ],
)
def test_spec_rejects_bad_values(changes: dict[str, object], message: str) -> None:
    """Each bad field raises ConfigurationError saying what is wrong."""
    with pytest.raises(ConfigurationError, match=message):
        SandboxSpec(**changes)  # type: ignore[arg-type]


def test_spec_env_is_read_only_copy() -> None:
    """The env mapping is copied and cannot be changed through the spec."""
    source = {"A": "1"}
    spec = SandboxSpec(env=source)
    source["A"] = "2"
    assert spec.env["A"] == "1"
    with pytest.raises(TypeError):
        spec.env["B"] = "x"  # type: ignore[index]


def test_parse_user_defaults_gid_to_uid() -> None:
    """A bare uid means uid:uid."""
    assert parse_user("1234") == (1234, 1234)
    assert parse_user("10:20") == (10, 20)


@pytest.mark.parametrize(
    ("entry", "host", "ports", "is_ip"),
    [
        ("api.example.com", "api.example.com", {80, 443}, False),
        ("API.Example.com.", "api.example.com", {80, 443}, False),
        ("db.internal:5432", "db.internal", {5432}, False),
        ("svc.local:*", "svc.local", set(), False),
        ("*.example.com", "*.example.com", {80, 443}, False),
        ("10.1.2.3:8080", "10.1.2.3", {8080}, True),
        ("10.1.2.3", "10.1.2.3", {80, 443}, True),
        ("[2001:db8::1]:443", "2001:db8::1", {443}, True),
        ("[::1]", "::1", {80, 443}, True),
    ],
)
def test_parse_allow_accepted_forms(entry: str, host: str, ports: set[int], is_ip: bool) -> None:
    """Allowlist entries parse into host, ports and IP-ness."""
    (rule,) = parse_allow([entry])
    assert (rule.host, set(rule.ports), rule.is_ip) == (host, ports, is_ip)


@pytest.mark.parametrize(
    "bad",
    [
        "https://api.example.com",
        "api.example.com/path",
        "host:0",
        "host:70000",
        "host:http",
        "2001:db8::1",
        "[2001:db8::1",
        "[nothex]:80",
        "bad_host!",
        "10.1.2",
        "",
        "-lead.example.com",
    ],
)
def test_parse_allow_rejects_with_accepted_forms(bad: str) -> None:
    """A bad allowlist entry says which forms are accepted."""
    with pytest.raises(ConfigurationError, match="accepted forms"):
        parse_allow([bad])


def test_allow_rule_matching() -> None:
    """Rules match exact hosts, wildcard subdomains and ports; IP rules match only IPs."""
    exact, wildcard, ip, any_port = parse_allow(
        ["api.example.com", "*.example.org", "10.0.0.5:8080", "svc.test:*"]
    )
    assert exact.matches("API.example.com", 443)
    assert not exact.matches("api.example.com", 22)
    assert not exact.matches("evil-api.example.com", 443)
    assert wildcard.matches("a.b.example.org", 80)
    assert not wildcard.matches("example.org", 80)
    assert not wildcard.matches("badexample.org", 80)
    assert ip.matches("10.0.0.5", 8080)
    assert not ip.matches("10.0.0.5", 80)
    assert any_port.matches("svc.test", 65000)
    assert str(any_port) == "svc.test:*"


def test_spec_validates_allow_at_construction() -> None:
    """A spec with a bad allowlist entry fails when built, not when run."""
    with pytest.raises(ConfigurationError, match="bad_host"):
        SandboxSpec(allow=["ok.example.com", "bad_host!"])
    spec = SandboxSpec(allow=["ok.example.com"])
    assert spec.allow_rules[0].host == "ok.example.com"
