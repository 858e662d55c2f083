"""`.env.example` lists every environment variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\b((?:AGENT_RUNTIME|OTEL)_[A-Z0-9_]*[A-Z0-9]|DOCKER_HOST)\b")
DELIVERY = (
    "QUEUE_SIZE",
    "BATCH_SIZE",
    "LINGER",
    "INITIAL_BACKOFF",
    "MAX_BACKOFF",
    "SPOOL_DIR",
    "SPOOL_MAX_BYTES",
    "SPOOL_SEGMENT_BYTES",
)


def _documented() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and line[0] != "#"}


def test_every_variable_in_the_code_is_in_env_example() -> None:
    """Each AGENT_RUNTIME_*/OTEL_* name in the code, and each sink delivery setting, is listed."""
    used: set[str] = set()
    for package in ("agent_runtime", "observability"):
        for path in (ROOT / package).rglob("*.py"):
            used |= set(NAME.findall(path.read_text()))
    used |= {
        f"AGENT_RUNTIME_{sink}_{name}" for sink in ("LOKI", "ELASTICSEARCH") for name in DELIVERY
    }
    used.discard("AGENT_RUNTIME_FLAG")  # the prefix of the per-flag variables
    missing = sorted(used - _documented())
    assert missing == [], f"add these to .env.example: {missing}"


def test_every_flag_has_its_variable() -> None:
    """Every feature flag's AGENT_RUNTIME_FLAG_<NAME> variable is listed."""
    from agent_runtime.flags import Flags, env_name

    names = {env_name(f["name"]) for f in Flags.describe()}
    assert names <= _documented()
