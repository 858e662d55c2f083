"""Fixtures for the resilience tests (helpers live in ``resilience_helpers``)."""

from __future__ import annotations

import pytest
from resilience_helpers import FakeClock, Sleeps


@pytest.fixture
def clock() -> FakeClock:
    """A hand-moved clock."""
    return FakeClock()


@pytest.fixture
def sleeps(clock: FakeClock) -> Sleeps:
    """A sleep recorder that advances ``clock``."""
    return Sleeps(clock)
