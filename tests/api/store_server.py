"""An Ollama store laid out by hand, and the app over the real engine on a store: for the HTTP
tests that need the store itself (manifests, blobs, create, delete), not the fake engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from backend.engine.local_engine import create_engine
from backend.store import manifest as mf
from ollama_compat.app import create_app
from ollama_compat.settings import Settings


def ollama_layout(root: Path, name: str, gguf: Path, system: bytes | None = None) -> Path:
    """`root` as `ollama create` leaves it for one model: blobs by digest, and a manifest that names
    the GGUF's blob (and the system prompt's, when given) under `name`."""
    layers = [{"mediaType": mf.MEDIA_MODEL, **mf.write_blob(root, gguf.read_bytes())}]
    if system is not None:
        layers.append({"mediaType": mf.MEDIA_SYSTEM, **mf.write_blob(root, system)})
    mf.write_manifest(root, mf.parse_name(name), layers)
    return root


@contextlib.asynccontextmanager
async def store_client(aiohttp_client, root: Path, num_parallel: int) -> AsyncIterator:
    """A test client of the app over the real engine serving `root`; the engine closes after."""
    engine = create_engine(str(root), num_parallel=num_parallel)
    try:
        yield await aiohttp_client(create_app(engine, Settings.from_env({"OLLAMA_MODELS": str(root)})))
    finally:
        engine.close()
