"""The ASGI service (``agent-runtime serve``): metrics, health, admin flags, the runs API."""

from __future__ import annotations

from agent_runtime.service.app import ServiceConfig, create_app

__all__ = ["ServiceConfig", "create_app"]
