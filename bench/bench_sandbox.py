"""Sandbox start-up latency: agent-runtime's DockerSandbox next to bare Docker and llm-sandbox.

Targets (issue 4): cold start-to-first-output p50 <= 300 ms, warm-pool acquire-to-first-output
p50 <= 60 ms. References on the same engine and image: a bare ``docker run --rm`` and a bare
``docker exec`` (Docker CLI, time to the first output line), and the peer ``llm-sandbox``
(``SandboxSession`` cold; warm, one open session whose container is reused across runs, since its
pool needs network access to set up a venv per container). llm-sandbox returns output only when
the command ends, so it is compared on time to result; agent-runtime is shown on both.

Every iteration runs each scenario once, in rotation, so they share the machine's conditions.
The command is ``python3 -c "print('ready')"`` everywhere. agent-runtime runs with its hardened
defaults and limits (non-root, caps dropped, read-only root, loop-mounted 64 MiB workspace when
root, 256 MiB memory); llm-sandbox runs with its defaults (plus ``--init`` so it stops fast).

    python bench/bench_sandbox.py [--runs 15] [--image agent-runtime-sandbox:latest]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent_runtime.events import Event, SandboxOutput, Scope, hooks
from agent_runtime.sandbox import DockerSandbox, SandboxSpec, build_image
from agent_runtime.sandbox.spec import DEFAULT_IMAGE

CODE = "print('ready')"
COMMAND = ["python3", "-c", CODE]
SPEC_CHANGES = {"memory": "256m", "disk": "64m", "tmp": "16m", "timeout": 30}


class FirstOutput:
    """A hook noting when the first SandboxOutput of a run arrives."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_event(self, event: Event) -> None:
        if self.at is None and isinstance(event, SandboxOutput):
            self.at = time.perf_counter()

    def scope(self, scope: Scope) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


Sample = tuple[float | None, float]  # (first output, result) seconds after start


def _cli_first_line(args: list[str]) -> Sample:
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    first = time.perf_counter() - start
    proc.wait()
    proc.stdout.close()
    done = time.perf_counter() - start
    if line.strip() != "ready":
        raise RuntimeError(f"{args[:2]} printed {line!r}")
    return first, done


def _ours(box: DockerSandbox, spec: SandboxSpec, warm: bool) -> Sample:
    if warm and not box.wait_warm(spec, 1, timeout=60):
        raise RuntimeError("the warm pool did not refill within 60 s")
    tap = FirstOutput()
    hooks.subscribe(tap)
    try:
        start = time.perf_counter()
        result = box.run(COMMAND, spec=spec)
        done = time.perf_counter() - start
    finally:
        hooks.unsubscribe(tap)
    if not result.ok or result.warm is not warm:
        raise RuntimeError(f"unexpected result: {result.reason} warm={result.warm} {result.stderr}")
    return (tap.at - start if tap.at else None), done


@contextlib.contextmanager
def _peer(image: str) -> Iterator[tuple[Callable[[], Sample], Callable[[], Sample]]]:
    from llm_sandbox import SandboxSession

    options: dict[str, Any] = {
        "lang": "python",
        "image": image,
        "skip_environment_setup": True,
        "workdir": "/tmp/sandbox",  # the image's user may not create /sandbox
        "runtime_configs": {"init": True},
    }

    def cold() -> Sample:
        start = time.perf_counter()
        with SandboxSession(**options) as session:
            result = session.run(CODE)
            done = time.perf_counter() - start
        if result.stdout.strip() != "ready":
            raise RuntimeError(f"llm-sandbox printed {result.stdout!r} {result.stderr!r}")
        return None, done

    # llm-sandbox's pool always runs pooled code in a venv it makes with `pip install --upgrade
    # pip` (network); its closest warm mode offline is one open session, whose container is
    # reused across runs (agent-runtime never reuses one).
    session = SandboxSession(**options)
    session.open()

    def warm() -> Sample:
        start = time.perf_counter()
        result = session.run(CODE)
        done = time.perf_counter() - start
        if result.stdout.strip() != "ready":
            raise RuntimeError(f"llm-sandbox session printed {result.stdout!r}")
        return None, done

    try:
        yield cold, warm
    finally:
        session.close()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--no-peer", action="store_true", help="skip llm-sandbox")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    args = parser.parse_args(argv)

    build_image(args.image, offline=True)  # cached when up to date
    spec = SandboxSpec(image=args.image, **SPEC_CHANGES)  # type: ignore[arg-type]
    load_before = os.getloadavg()
    scenarios: dict[str, Callable[[], Sample]] = {}
    with contextlib.ExitStack() as stack:
        exec_target = subprocess.run(
            ["docker", "run", "-d", "--rm", "--init", args.image, "sleep", "infinity"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        stack.callback(
            subprocess.run, ["docker", "rm", "-f", exec_target], capture_output=True, check=False
        )
        cold_box = stack.enter_context(DockerSandbox(spec))
        warm_box = stack.enter_context(DockerSandbox(spec, warm=1))
        scenarios["docker run --rm (CLI)"] = lambda: _cli_first_line(
            ["docker", "run", "--rm", args.image, *COMMAND]
        )
        scenarios["docker exec (CLI)"] = lambda: _cli_first_line(
            ["docker", "exec", exec_target, *COMMAND]
        )
        scenarios["agent-runtime cold"] = lambda: _ours(cold_box, spec, warm=False)
        scenarios["agent-runtime warm pool"] = lambda: _ours(warm_box, spec, warm=True)
        if not args.no_peer:
            peer_cold, peer_warm = stack.enter_context(_peer(args.image))
            scenarios["llm-sandbox cold"] = peer_cold
            scenarios["llm-sandbox open session"] = peer_warm
        samples: dict[str, list[Sample]] = {name: [] for name in scenarios}
        for warm_up in scenarios.values():  # the first run after an image import is slow
            warm_up()
        for _ in range(args.runs):
            for name, run in scenarios.items():
                samples[name].append(run())

    firsts = {n: [s[0] * 1000 for s in v if s[0] is not None] for n, v in samples.items()}
    results = {n: [s[1] * 1000 for s in v] for n, v in samples.items()}
    targets = {"agent-runtime cold": 300.0, "agent-runtime warm pool": 60.0}
    print(
        f"\nsandbox start-up, {args.runs} runs each, image {args.image}, "
        f"{os.cpu_count()} CPUs, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}\n"
    )
    header = (
        f"{'scenario':26} {'first output p50':>17} {'result p50':>11} {'result p90':>11}  target"
    )
    print(header)
    print("-" * len(header))
    for name in samples:
        first = f"{statistics.median(firsts[name]):.0f} ms" if firsts[name] else "-"
        target = targets.get(name)
        verdict = ""
        if target is not None and firsts[name]:
            ok = statistics.median(firsts[name]) <= target
            verdict = f"<= {target:.0f} ms first output: {'met' if ok else 'MISSED'}"
        print(
            f"{name:26} {first:>17} {statistics.median(results[name]):>8.0f} ms "
            f"{_p(results[name], 0.9):>8.0f} ms  {verdict}"
        )

    def ratio(a: str, b: str, what: dict[str, list[float]]) -> str:
        if not what.get(a) or not what.get(b):
            return "n/a"
        return f"{statistics.median(what[a]) / statistics.median(what[b]):.2f}x"

    print("\nratios of medians")
    print(
        f"  cold first output / docker run first output : {ratio('agent-runtime cold', 'docker run --rm (CLI)', firsts)}"
    )
    print(
        f"  warm first output / docker exec first output: {ratio('agent-runtime warm pool', 'docker exec (CLI)', firsts)}"
    )
    if not args.no_peer:
        print(
            f"  cold result / llm-sandbox cold result       : {ratio('agent-runtime cold', 'llm-sandbox cold', results)}"
        )
        print(
            f"  warm result / llm-sandbox session result    : {ratio('agent-runtime warm pool', 'llm-sandbox open session', results)}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"first_ms": firsts, "result_ms": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
