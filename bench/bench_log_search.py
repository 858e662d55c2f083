"""Benchmark of the embedded log search over a million records (target: every query p50 < 1 s).

Builds (once, then cached) a store of realistic records: many runs with their own trace ids,
levels from DEBUG to CRITICAL, about 50-word messages drawn from a Zipf-distributed vocabulary,
exceptions with stacks on errors, spread over the 7 days before a fixed "now". Then times each
query shape the CLI uses, repeated, and prints p50/p95; then the ingest rate of the local sink
(records/s through ``submit`` + the background writer) and the retention pruning rate.

Usage::

    python bench/bench_log_search.py [--records 1000000] [--cache-dir DIR] [--repeat 20]

The cache file is ``DIR/log-search-<records>-v<layout>.db`` (default DIR: the system temp dir);
delete it to rebuild.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from observability.records import LogEntry, format_timestamp
from observability.search import SCHEMA_VERSION, LocalLogStore
from observability.sinks.local import LocalLogSink

DAY = 86_400.0
SPAN = 7 * DAY
RECORDS_PER_RUN = 50
CONCURRENT_RUNS = 20
RARE_WORD = "zanzibarquux"
RARE_COUNT = 25
LEVELS = (("DEBUG", 0.15), ("INFO", 0.70), ("WARNING", 0.10), ("ERROR", 0.045), ("CRITICAL", 0.005))
LOGGERS = (
    "agent_runtime.runtime",
    "agent_runtime.state.store",
    "agent_runtime.resilience.retry",
    "agent_runtime.resilience.breaker",
    "agent_runtime.sandbox.docker",
    "agent_runtime.sandbox.pool",
    "agent_runtime.service",
    "app.agent.planner",
    "app.agent.tools",
    "app.agent.llm",
    "httpx",
    "uvicorn.access",
)
WORKFLOWS = ("triage", "summarize", "research", "codegen", "support_reply", "refund")
LOG_WORDS = [
    "request",
    "connection",
    "timeout",
    "retry",
    "step",
    "started",
    "finished",
    "failed",
    "sandbox",
    "container",
    "checkpoint",
    "workflow",
    "response",
    "tokens",
    "model",
    "tool",
    "call",
    "error",
    "status",
    "user",
    "ticket",
    "queue",
    "latency",
    "breaker",
    "open",
    "closed",
    "limiter",
    "slot",
    "fallback",
    "served",
    "result",
    "score",
    "label",
    "fetch",
]
EXC_TYPES = ("TimeoutError", "httpx.ConnectError", "ValueError", "KeyError", "RuntimeError")


def vocabulary(rng: random.Random, size: int = 8000) -> list[str]:
    """Return ``size`` distinct words: common log words first, then pseudo-words."""
    words = list(LOG_WORDS)
    seen = set(words) | {RARE_WORD}
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    while len(words) < size:
        n = rng.randint(2, 4)
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def hexid(rng: random.Random, digits: int) -> str:
    """Return ``digits`` random lower-case hex digits."""
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def generate(records: int, end: float, seed: int = 7) -> Iterator[LogEntry]:
    """Yield ``records`` realistic entries in time order, the last one at ``end``."""
    rng = random.Random(seed)
    words = vocabulary(rng)
    cum = []
    total = 0.0
    for rank in range(len(words)):
        total += 1.0 / (rank + 1)
        cum.append(total)
    rare_at = set(rng.sample(range(records), RARE_COUNT))
    runs = records // RECORDS_PER_RUN + CONCURRENT_RUNS
    run_ids = [f"run-{hexid(rng, 12)}" for _ in range(runs)]
    trace_ids = [hexid(rng, 32) for _ in range(runs)]
    level_names = [name for name, _ in LEVELS]
    level_weights = [weight for _, weight in LEVELS]
    start = end - SPAN
    step = SPAN / records
    for i in range(records):
        t = start + i * step + rng.random() * step
        level = rng.choices(level_names, level_weights)[0]
        message_words = rng.choices(words, cum_weights=cum, k=rng.randint(40, 60))
        if i in rare_at:
            message_words[rng.randrange(len(message_words))] = RARE_WORD
        fields: dict[str, Any] = {
            "timestamp": format_timestamp(t),
            "level": level,
            "logger": rng.choice(LOGGERS),
            "message": " ".join(message_words),
            "service": "bench",
        }
        if rng.random() < 0.9:
            run = i // RECORDS_PER_RUN + rng.randrange(CONCURRENT_RUNS)
            fields["trace_id"] = trace_ids[run]
            fields["span_id"] = hexid(rng, 16)
            fields["run_id"] = run_ids[run]
            fields["workflow"] = WORKFLOWS[run % len(WORKFLOWS)]
            fields["step"] = rng.choice(("fetch", "classify", "score", "reply"))
            fields["attempt"] = rng.randint(1, 3)
        if level in ("ERROR", "CRITICAL"):
            etype = rng.choice(EXC_TYPES)
            emsg = " ".join(rng.choices(words, cum_weights=cum, k=10))
            frames = "".join(
                f'  File "/app/agent/{rng.choice(string.ascii_lowercase)}.py", line '
                f"{rng.randint(1, 400)}, in handler\n    result = call(payload)\n"
                for _ in range(5)
            )
            fields["exception"] = {
                "type": etype,
                "message": emsg,
                "stack": f"Traceback (most recent call last):\n{frames}{etype}: {emsg}\n",
            }
        yield LogEntry(int(t * 1e9), level, fields)


def build(path: Path, records: int, end: float) -> float:
    """Write ``records`` generated entries to a new store at ``path``; return inserts/s."""
    inserting = 0.0
    with LocalLogStore(path, max_records=None, max_age=None, clock=lambda: end) as store:
        chunk: list[LogEntry] = []
        done = 0
        for entry in generate(records, end):
            chunk.append(entry)
            if len(chunk) == 50_000 or done + len(chunk) == records:
                began = time.perf_counter()
                done += store.insert(chunk)  # one transaction
                inserting += time.perf_counter() - began
                chunk = []
                print(f"  built {done:,} records", file=sys.stderr)
    return records / inserting


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, int]:
    """Run ``fn`` ``repeat`` times (after one warm-up); return p50, p95 (ms) and result size."""
    result = fn()
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    size = len(result) if isinstance(result, list) else 0
    return statistics.median(samples), p95, size


def sink_ingest(records: int) -> tuple[float, float, float]:
    """Push ``records`` entries through a LocalLogSink; return records/s, submit us, prune/s."""
    entries = list(generate(records, time.time(), seed=11))
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalLogStore(Path(tmp) / "ingest.db", max_records=None, max_age=None)
        sink = LocalLogSink(store, max_queue=records + 1)
        began = time.perf_counter()
        for entry in entries:
            sink.submit(entry)
        submitted = time.perf_counter()
        if not sink.flush(timeout=300):
            raise SystemExit("the sink did not drain within 300 s")
        elapsed = time.perf_counter() - began
        sink.close(timeout=10)
        if sink.health().dropped:
            raise SystemExit(f"the sink dropped {sink.health().dropped} records")
        store.max_records = records // 2
        pruned = 0
        began_prune = time.perf_counter()
        while (n := store.prune(2_000)) > 0:
            pruned += n
        prune_rate = pruned / (time.perf_counter() - began_prune)
        store.close()
    return records / elapsed, (submitted - began) / records * 1e6, prune_rate


def main() -> None:
    """Build or reuse the store, time the queries and the sink, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--ingest", type=int, default=100_000, help="records for the sink rate")
    args = parser.parse_args()

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = args.cache_dir / f"log-search-{args.records}-v{SCHEMA_VERSION}.db"
    meta_path = path.with_suffix(".json")
    meta: dict[str, Any] = {}
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
    if meta.get("records") != args.records:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        end = float(int(time.time()))
        print(f"building {args.records:,} records in {path} ...", file=sys.stderr)
        rate = build(path, args.records, end)
        meta = {"records": args.records, "end": end, "build_rate": rate}
        meta_path.write_text(json.dumps(meta))
    end = meta["end"]

    store = LocalLogStore(path, max_records=None, max_age=None, clock=lambda: end)
    stats = store.stats()
    rng = random.Random(3)
    # Real trace and run ids to look up, from the last three days.
    samples = [r for r in store.search(since="3d", until="1d", limit=5000) if r.get("trace_id")]
    traces = [r["trace_id"] for r in samples]
    runs = [r["run_id"] for r in samples]

    queries: list[tuple[str, Callable[[], object]]] = [
        (f"text rare word ({RARE_WORD})", lambda: store.search(RARE_WORD)),
        ("text common word (request), limit 100", lambda: store.search("request")),
        ("text two words (timeout retry)", lambda: store.search("timeout retry")),
        ("text prefix (conn*)", lambda: store.search("conn*")),
        ('text phrase ("step started")', lambda: store.search('"step started"')),
        ("trace id", lambda: store.search(trace_id=rng.choice(traces))),
        ("run id", lambda: store.search(run_id=rng.choice(runs))),
        ("level=ERROR since 1h", lambda: store.search(level="ERROR", since="1h")),
        ("level=CRITICAL (all time)", lambda: store.search(level="CRITICAL")),
        ("newest 100, no filter", lambda: store.search()),
        (
            "combined: text + level>=WARNING + since 24h + logger",
            lambda: store.search(
                "request timeout", level="WARNING", since="24h", logger="agent_runtime"
            ),
        ),
        (
            "combined: text + trace id",
            lambda: store.search("request", trace_id=rng.choice(traces)),
        ),
        (
            "combined: text + run id + level>=INFO",
            lambda: store.search("step", run_id=rng.choice(runs), level="INFO"),
        ),
        (
            "combined: prefix (conn*) + trace id",
            lambda: store.search("conn*", trace_id=rng.choice(traces)),
        ),
        (
            "slowest found: prefix (conn*) + level=CRITICAL + logger",
            lambda: store.search("conn*", level="CRITICAL", logger="httpx"),
        ),
        ('text with FTS syntax (a AND (b - "c: *)', lambda: store.search('a AND (b - "c: *')),
    ]
    print()
    print(
        f"store: {stats.records:,} records, {stats.size_bytes / 1e6:,.0f} MB "
        f"({stats.size_bytes / max(stats.records, 1):,.0f} bytes/record), "
        f"built with LocalLogStore.insert at {meta['build_rate']:,.0f} records/s "
        "(50,000 per transaction)"
    )
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print()
    print(f"| query (limit 100, {args.repeat} runs) | p50 ms | p95 ms | rows | p50 vs 1 s target |")
    print("| --- | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for name, fn in queries:
        p50, p95, size = timed(fn, args.repeat)
        worst = max(worst, p50)
        print(f"| {name} | {p50:.2f} | {p95:.2f} | {size} | {1000 / p50:,.0f}x under |")
    store.close()

    rate, submit_us, prune_rate = sink_ingest(args.ingest)
    print()
    print("| local sink | value |")
    print("| --- | ---: |")
    print(f"| ingest, submit to committed ({args.ingest:,} records) | {rate:,.0f} records/s |")
    print(f"| submit() cost in the logging thread | {submit_us:.2f} us/record |")
    print(f"| retention pruning (2,000 per transaction) | {prune_rate:,.0f} records/s |")
    print()
    print(f"slowest p50: {worst:.2f} ms (target < 1000 ms): {'PASS' if worst < 1000 else 'FAIL'}")


if __name__ == "__main__":
    main()
