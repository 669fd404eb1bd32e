"""llama.cpp's OpenAI server (llama-cpp-python's llama_cpp.server) on SmolLM2 as an upstream:
what the ollama client gets through our proxy equals what the openai client gets from it straight,
with the same sampling fields."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import ollama
import openai
import pytest

from .test_upstream_proxy import Proxy, free_port, upstreams_toml

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None,
    reason="llama_cpp.server is not installed (pip install 'llama-cpp-python[server]', the [bench] extra)",
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 24, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.05}
# The same settings in the request llama.cpp's server reads (top_k, min_p, repeat_penalty are its extensions).
SAME = {"temperature": 0, "max_tokens": 24, "top_p": 0.9, "extra_body": {"top_k": 40, "min_p": 0.0, "repeat_penalty": 1.05}}


# llama_cpp.server as `python -m llama_cpp.server` runs it, but with llama.cpp's extra weight
# buffers off: llama-cpp-python 0.3.36's AMX matmul dies (SIGSEGV) for batches of more than one
# token on a Sapphire Rapids VM (see bench/ggml_ops.py), i.e. on any prompt. Plain CPU buffers
# compute the same model.
LAUNCH = """
import runpy, sys
import llama_cpp.llama_cpp as lc
default = lc.llama_model_default_params
def params():
    p = default()
    p.use_extra_bufts = False
    return p
lc.llama_model_default_params = params
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


@pytest.fixture(scope="module")
def llama_server(smollm2_gguf):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "--model", str(smollm2_gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--verbose", "False",
         "--interrupt_requests", "False"],  # else a health check's GET /v1/models ends a running stream
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=2)
    deadline = time.monotonic() + 120
    while True:
        try:
            client.models.list()
            break
        except openai.APIConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("llama_cpp.server did not start")
            time.sleep(0.3)
    yield url
    process.kill()
    process.wait()


def cold(direct: openai.OpenAI, call):
    """`call()` with llama.cpp's context holding no prefix of its prompt. llama-cpp-python reuses
    the longest prefix the previous request left in the context and evaluates only the rest, in a
    smaller batch with other rounding, and a 135M model's greedy answer can turn on that: a request
    that begins with another token first makes every compared request evaluate its whole prompt."""
    direct.completions.create(model="smollm2", prompt="Hello", max_tokens=1)
    return call()


@pytest.fixture(scope="module")
def proxy(llama_server):
    proxy = Proxy(upstreams_toml({"smol-remote": ("smollm2", [llama_server])}))
    yield proxy
    proxy.close()


def test_chat_through_the_proxy_equals_llama_cpp_direct(proxy, llama_server):
    direct = openai.OpenAI(base_url=llama_server, api_key="unused", timeout=120)
    client = ollama.Client(host=proxy.url)
    want = cold(direct, lambda: direct.chat.completions.create(model="smollm2", messages=QUESTION, **SAME))
    reply = cold(direct, lambda: client.chat(model="smol-remote", messages=QUESTION, options=GREEDY))
    assert reply.message.content == want.choices[0].message.content and reply.message.content
    # llama_cpp.server streams no usage (it ignores stream_options): the tokens are counted as they
    # arrive, one per event, and the prompt's count is unknown here (0).
    assert reply.eval_count == want.usage.completion_tokens
    assert reply.done_reason == ("length" if want.choices[0].finish_reason == "length" else "stop")
    parts = cold(direct, lambda: list(client.chat(model="smol-remote", messages=QUESTION, options=GREEDY, stream=True)))
    assert "".join(p.message.content for p in parts) == reply.message.content and len(parts) > 2
    assert parts[-1].eval_count == reply.eval_count and parts[-1].eval_duration > 0


def test_generate_and_raw_through_the_proxy(proxy, llama_server):
    direct = openai.OpenAI(base_url=llama_server, api_key="unused", timeout=120)
    client = ollama.Client(host=proxy.url)
    chat = cold(direct, lambda: direct.chat.completions.create(model="smollm2", messages=QUESTION, **SAME))
    generated = cold(direct, lambda: client.generate(model="smol-remote", prompt=QUESTION[0]["content"], options=GREEDY))
    assert generated.response == chat.choices[0].message.content  # a prompt is a one-message chat, as Ollama renders it
    prompt = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    raw = cold(direct, lambda: direct.completions.create(model="smollm2", prompt=prompt, **SAME))
    streamed = cold(direct, lambda: "".join(p.response for p in client.generate(
        model="smol-remote", prompt=prompt, raw=True, options=GREEDY, stream=True)))  # fmt: skip
    assert streamed == raw.choices[0].text and streamed


def test_show_reads_the_upstream_model_entry(proxy, smollm2_gguf):
    shown = ollama.Client(host=proxy.url).show("smol-remote")
    assert shown.modelinfo["remote.owned_by"] == "me"  # llama_cpp.server's /v1/models entry
    assert shown.details.family == "remote"
