"""The app on a real port, in a thread with its own event loop, over the real engine."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from backend.engine.local_engine import create_engine
from ollama_compat.app import create_app
from ollama_compat.settings import Settings


class Server:
    """The app on a real port, in a thread with its own event loop (as `serve` runs it)."""

    def __init__(self, models_dir, num_parallel=1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.engine = create_engine(str(models_dir), num_parallel=num_parallel)
        settings = Settings.from_env({"OLLAMA_HOST": f"127.0.0.1:{self.port}", "OLLAMA_MODELS": str(models_dir)})
        self.app = create_app(self.engine, settings)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def start():
            self.runner = web.AppRunner(self.app, handler_cancellation=True)
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
        self.engine.close()
