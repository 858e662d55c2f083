"""The metric catalogue: Prometheus naming rules, bounded labels, and the README's table."""

from __future__ import annotations

import re
from pathlib import Path

from observability import metrics

ROOT = Path(__file__).resolve().parents[2]
UNBOUNDED = {"run_id", "trace_id", "span_id", "id", "user", "message", "error_message"}


def test_names_follow_prometheus_conventions() -> None:
    """One prefix, snake case, base units, no label that could grow without bound."""
    for metric in metrics.CATALOGUE:
        name = metric._name
        assert name.startswith("agent_runtime_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert not name.endswith("_total"), f"{name}: prometheus-client adds _total itself"
        if "duration" in name or "wait" in name or "write" in name:
            assert name.endswith("_seconds"), f"{name}: durations are in seconds"
        assert not set(metric._labelnames) & UNBOUNDED, f"{name}: unbounded label"


def test_readme_table_matches_the_catalogue() -> None:
    """Every row of `python -m observability.metrics` is in the README, and nothing else is."""
    readme = (ROOT / "README.md").read_text()
    table = metrics._markdown_table().splitlines()
    for row in table[2:]:
        assert row in readme, f"README is missing or has a stale metrics row: {row}"
    documented = set(re.findall(r"^\| `(agent_runtime_[a-z0-9_]+)` \|", readme, re.M))
    expected = {row.split("`")[1] for row in table[2:]}
    assert documented == expected
