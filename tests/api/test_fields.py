"""Field differences real clients found (issue 25, item 3), each against Ollama's docs or code:
/api/show's tensors and model_info, /v1/models, prompt_eval_count with a cached prefix."""

from __future__ import annotations

import datetime as dt
import re

import aiohttp
import gguf
import ollama
import openai
import pytest

from backend.testmodels import write_model

from .live_server import Server


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return write_model("llama", root / "tiny.gguf", config={"max_position_embeddings": 256}, seed=1)


@pytest.fixture(scope="module")
def server(gguf_path):
    srv = Server(gguf_path.parent)
    yield srv
    srv.close()


def reader_values(path) -> dict:
    """The GGUF's key/values as gguf-py reads them (the independent reader), arrays whole."""
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


async def test_show_has_tensors_and_model_info_as_ollama_answers(server, gguf_path):
    """api.md's example: no general.name nor tokenizer.chat_template in model_info, arrays over 5
    items as [] ("populates if verbose=true"); tensors (name, type, shape) always, as ShowHandler
    lists them from the GGUF: ggml type names and GGUF's dimension order."""
    assert (await ollama.AsyncClient(server.url).show("tiny")).modelinfo  # the official client parses it
    raw = await show_raw(server, "tiny")
    expected = reader_values(gguf_path)
    info = raw["model_info"]
    assert "general.name" in expected and "tokenizer.chat_template" in expected
    assert info.keys() == expected.keys() - {"general.name", "tokenizer.chat_template"} | {"general.parameter_count"}
    for key, value in expected.items():
        if key in info:
            assert info[key] == ([] if isinstance(value, list) and len(value) > 5 else pytest.approx(value)), key
    reader = gguf.GGUFReader(gguf_path)
    assert [(t["name"], t["type"], t["shape"]) for t in raw["tensors"]] == [
        (t.name, t.tensor_type.name, t.shape.tolist()) for t in reader.tensors]
    assert "system" not in raw and "license" not in raw  # omitempty, as api.ShowResponse


async def test_show_verbose_returns_the_arrays_whole(server, gguf_path):
    info = (await show_raw(server, "tiny", verbose=True))["model_info"]
    expected = reader_values(gguf_path)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):  # 320, 59, 320
        assert len(expected[key]) > 5 and info[key] == expected[key], key
    assert "tokenizer.chat_template" not in info and "general.name" not in info


async def show_raw(server, model, **body):
    """The JSON itself: ollama-python's ShowResponse has no `tensors` field to read them back."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{server.url}/api/show", json={"model": model, **body}) as r:
            assert r.status == 200
            return await r.json()


async def test_a_model_with_a_system_prompt_shows_it(server):
    client = ollama.AsyncClient(server.url)
    await client.create("tiny-sys", from_="tiny", system="Be brief.")
    try:
        raw = await show_raw(server, "tiny-sys")
        assert raw["system"] == "Be brief." and raw["tensors"]
    finally:
        await client.delete("tiny-sys")


async def test_v1_models_owned_by_the_namespace_created_at_modification(server):
    """openai.go's ListCompletion: created = ModifiedAt.Unix(), owned_by = ParseName(id).Namespace."""
    tags = {m.model: m.modified_at for m in (await ollama.AsyncClient(server.url).list()).models}
    oai = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="ollama")
    listed = (await oai.models.list()).data
    assert [m.id for m in listed] == list(tags)
    for m in listed:
        assert m.owned_by == "library" and m.object == "model"
        assert m.created == int(tags[m.id].timestamp())
        assert set(m.model_dump(exclude_none=True)) == {"id", "object", "created", "owned_by"}
    one = await oai.models.retrieve("tiny")
    assert (one.id, one.owned_by, one.created) == ("tiny", "library", int(tags["tiny:latest"].timestamp()))
    assert tags["tiny:latest"].tzinfo is not None and tags["tiny:latest"] <= dt.datetime.now(dt.timezone.utc)


async def test_prompt_eval_count_is_the_whole_prompt_also_from_the_cache(server):
    """Ollama counts the prompt before trimming the cached prefix: the same chat twice reports
    the same prompt_eval_count; OpenAI's usage.prompt_tokens is that count too."""
    client = ollama.AsyncClient(server.url)
    messages = [{"role": "system", "content": "A long shared system prompt for every turn."},
                {"role": "user", "content": "hello there"}]  # fmt: skip
    options = {"num_predict": 2, "temperature": 0}
    cold = await client.chat("tiny", messages=messages, options=options)
    warm = await client.chat("tiny", messages=messages, options=options)
    assert cold.prompt_eval_count == warm.prompt_eval_count > 10
    oai = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="ollama")
    reply = await oai.chat.completions.create(model="tiny", messages=messages, max_tokens=2, temperature=0)
    assert reply.usage.prompt_tokens == cold.prompt_eval_count
    longer = await client.chat("tiny", messages=messages + [{"role": "assistant", "content": "hi"},
                                                           {"role": "user", "content": "again"}], options=options)  # fmt: skip
    assert longer.prompt_eval_count > cold.prompt_eval_count  # the whole conversation, not its new tail


async def test_create_statuses_are_ollamas_words(server, gguf_path):
    """api.md's create examples: "parsing GGUF" for a GGUF from a blob, then "using existing layer
    sha256:…" for a stored blob and "creating new layer sha256:…" for a new one, then "writing
    manifest" and "success"."""
    client = ollama.AsyncClient(server.url)
    digest = await client.create_blob(gguf_path)
    first = [p.status async for p in await client.create("tiny-new", files={"tiny.gguf": digest},
                                                         system="Say hi.", stream=True)]  # fmt: skip
    again = [p.status async for p in await client.create("tiny-new2", from_="tiny-new", system="Say hi.", stream=True)]
    try:
        layer = r"(using existing|creating new) layer sha256:[0-9a-f]{64}"
        assert first[0] == "parsing GGUF" and first[1] == f"using existing layer {digest}"
        assert re.fullmatch(r"creating new layer sha256:[0-9a-f]{64}", first[2])  # the system prompt
        assert first[-2:] == ["writing manifest", "success"] and all(re.fullmatch(layer, s) for s in first[1:-2])
        assert again[0] == f"using existing layer {digest}" and again[1] == first[2].replace("creating new", "using existing")
        assert again[-2:] == ["writing manifest", "success"]
    finally:
        await client.delete("tiny-new")
        await client.delete("tiny-new2")


async def test_status_is_ollamas_cloud_policy(server):
    """api/types.go StatusResponse {"cloud": {"disabled", "source"}}: no cloud here."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.url}/api/status") as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert await r.json() == {"cloud": {"disabled": True, "source": "none"}}
