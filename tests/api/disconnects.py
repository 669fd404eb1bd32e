"""A client that goes away mid-generation, on any route: the generation behind it must stop."""

from __future__ import annotations

import asyncio

from backend.interface import Chunk

from .fake_engine import METRICS, FakeEngine


async def assert_disconnect_cancels(client, engine: FakeEngine, path: str, body: dict, stream: bool) -> None:
    """POSTs `body` to `path` while the fake engine takes 10 s to answer, and goes away: streaming,
    it closes the response after the headers and the first event; buffered, it cancels the request
    while the reply is still being generated. Either way the engine's generation is cancelled."""
    engine.delay = 0.2
    engine.script = [Chunk(content=str(i)) for i in range(50)] + [Chunk(done=True, metrics=METRICS)]
    request = asyncio.ensure_future(client.post(path, json={**body, "stream": stream}))
    if stream:
        (await request).close()
    else:
        await asyncio.sleep(0.5)
        request.cancel()
    for _ in range(40):
        if engine.cancelled:
            break
        await asyncio.sleep(0.05)
    assert engine.cancelled == 1
