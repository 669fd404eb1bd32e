"""Typed aiohttp application keys shared by the route modules (no module-level state)."""

from __future__ import annotations

from aiohttp import web

from backend.interface import Engine

from .settings import Settings

ENGINE = web.AppKey("engine", Engine)
SETTINGS = web.AppKey("settings", Settings)
