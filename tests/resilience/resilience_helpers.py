"""Helpers for the resilience tests: an injectable clock, sleep recorders, real httpx errors."""

from __future__ import annotations

from collections.abc import Mapping

import httpx


class FakeClock:
    """A clock the test moves by hand (epoch-like seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class Sleeps:
    """Records requested sleeps instead of sleeping (sync and async), moving a clock if given."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        self.calls.append(float(seconds))
        if self.clock is not None:
            self.clock.advance(seconds)

    async def async_sleep(self, seconds: float) -> None:
        """Async variant."""
        self(seconds)


def http_error(
    status: int, headers: Mapping[str, str] | None = None, url: str = "https://api.test/v1/x"
) -> httpx.HTTPStatusError:
    """A real httpx.HTTPStatusError carrying a real httpx.Response."""
    request = httpx.Request("POST", url)
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(
        f"Server error '{status}' for url '{url}'", request=request, response=response
    )
