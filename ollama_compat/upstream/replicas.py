"""The replicas behind upstream models: requests pending on each, health, and which to try first."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import Replica

log = logging.getLogger(__name__)


@dataclass
class ReplicaState:
    replica: Replica
    pending: int = 0  # requests sent and not finished, through this process
    healthy: bool = True  # optimistic until a check or a request says otherwise
    error: str = ""  # why it is down, for the 503 a client sees
    checked_at: float = 0.0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # its /v1/models entries by id


def auth_headers(replica: Replica) -> dict[str, str]:
    return {"Authorization": f"Bearer {replica.api_key}"} if replica.api_key else {}


class ReplicaPool:
    """Every distinct replica once, whichever models it serves: a server's pending count covers
    all the requests this process has on it."""

    def __init__(self, replicas: list[Replica]):
        self.states: dict[Replica, ReplicaState] = {r: ReplicaState(r) for r in replicas}
        self._turn = itertools.count()  # breaks ties in turn, so equal replicas share the load

    def order(self, replicas: tuple[Replica, ...]) -> list[ReplicaState]:
        """Healthy replicas by fewest pending first, then the ones marked down, as a last try
        (one may be back before its next check says so)."""
        turn = next(self._turn)
        states = [self.states[r] for r in replicas]
        ranked = sorted(range(len(states)), key=lambda i: (not states[i].healthy, states[i].pending,
                                                           (i - turn) % len(states)))  # fmt: skip
        return [states[i] for i in ranked]

    @contextmanager
    def using(self, state: ReplicaState) -> Iterator[None]:
        state.pending += 1
        try:
            yield
        finally:
            state.pending -= 1

    def mark_down(self, state: ReplicaState, error: str) -> None:
        if state.healthy:
            log.warning("upstream %s is down: %s", state.replica.url, error)
        state.healthy, state.error = False, error

    def mark_up(self, state: ReplicaState) -> None:
        if not state.healthy:
            log.info("upstream %s answers again", state.replica.url)
        state.healthy, state.error = True, ""

    async def check(self, session: aiohttp.ClientSession, state: ReplicaState, timeout: float) -> None:
        """GET /models: a 200 with a model list means up (and refreshes what it serves)."""
        try:
            async with session.get(f"{state.replica.url}/models", headers=auth_headers(state.replica),
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as response:  # fmt: skip
                if response.status != 200:
                    raise aiohttp.ClientError(f"GET /models answered {response.status}")
                body = await response.json(content_type=None)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise aiohttp.ClientError("GET /models did not answer a model list")
            state.models = {str(m.get("id")): m for m in data if isinstance(m, dict)}
            state.checked_at = time.time()
            self.mark_up(state)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            state.checked_at = time.time()
            self.mark_down(state, describe(e))

    async def check_all(self, session: aiohttp.ClientSession, timeout: float) -> None:
        await asyncio.gather(*(self.check(session, s, timeout) for s in self.states.values()))

    async def watch(self, session: aiohttp.ClientSession, interval: float, timeout: float) -> None:
        """Checks every replica every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.check_all(session, timeout)


def describe(error: BaseException) -> str:
    """A one-line reason a replica failed, for logs and for the 503's message."""
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect ({error.os_error.strerror or error.os_error})"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "disconnected"
    return str(error) or type(error).__name__
