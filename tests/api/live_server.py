"""The app on a real port, in a thread with its own event loop, over the real engine or a given one."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from ollama_compat.app import create_app, server_options
from ollama_compat.settings import Settings


class Server:
    """The app on a real port, in a thread with its own event loop (as `serve` runs it). Without
    `engine`, the real engine over `models_dir`; `settings` override the environment's."""

    def __init__(self, models_dir=None, num_parallel=1, engine=None, **settings):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.owns_engine = engine is None
        if engine is None:
            from backend.engine.local_engine import create_engine  # the model stack only when asked for

            engine = create_engine(str(models_dir), num_parallel=num_parallel)
        self.engine = engine
        env = {"OLLAMA_HOST": f"127.0.0.1:{self.port}", "OLLAMA_MODELS": str(models_dir or "")}
        self.settings = Settings.from_env(env, **settings)
        self.app = create_app(self.engine, self.settings)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def start():
            self.runner = web.AppRunner(self.app, **server_options(self.settings))
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
            started.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()))
        self.thread.start()
        assert started.wait(30)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        if self.owns_engine:
            self.engine.close()
