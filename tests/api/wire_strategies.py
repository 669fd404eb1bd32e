"""Hypothesis strategies for every endpoint's JSON body: each field a valid value or any JSON value at all."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field as dataclass_field
from typing import Any

from hypothesis import strategies as st

# Any JSON value, with the numbers the adversarial run sent (past 2^64, 1e-300, -1e308).
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([2**64, -1, 0, 10**12])
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e-300, -1e308, 1e308, 1e30, 0.5])
           | st.text(max_size=12))  # fmt: skip
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# Junk that is never a number: for fields where a number, even a valid one, could mean a long run
# on the real engine (num_predict 2^60).
not_numbers = json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)))
words = st.text(max_size=24)


def field(valid: st.SearchStrategy, junk: st.SearchStrategy = json_values, one_in: int = 8) -> st.SearchStrategy:
    """Mostly a value of the field's type, one time in `one_in` anything: a body with every field
    junk stops at its first check, so the checks behind it would never be reached."""
    # The last index, not 0: hypothesis draws its simplest choice (0) far more often than 1 in n.
    return st.integers(0, one_in - 1).flatmap(lambda i: junk if i == one_in - 1 else valid)


def inner(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A field of a message or tool call: there are many of them in one body, so junk is rarer."""
    return field(valid, one_in=20)


def rarely(rare: st.SearchStrategy, usual: st.SearchStrategy, one_in: int = 6) -> st.SearchStrategy:
    """`rare` one time in `one_in`: for values that end a request early (a model without vision
    sent images), which would otherwise hide what comes after them."""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == one_in - 1 else usual)


def obj(optional: dict[str, st.SearchStrategy], required: dict[str, st.SearchStrategy] | None = None):
    return st.fixed_dictionaries(required or {}, optional=optional)


@dataclass(frozen=True)
class Limits:
    """What the target can afford: the fake engine takes any number, the real one gets short runs."""

    models: tuple[str, ...]
    num_predict: st.SearchStrategy = st.integers(-2, 64)
    num_ctx: st.SearchStrategy = st.integers(-1, 2**20) | st.sampled_from([10**12, 2**40])
    num_batch: st.SearchStrategy = st.integers(-1, 4096)
    number_junk: st.SearchStrategy = json_values
    extra: dict[str, Any] = dataclass_field(default_factory=dict)


def options(limits: Limits) -> st.SearchStrategy:
    """api.Options, every field; the sampling values include the extremes Ollama accepts."""
    probability = rarely(st.floats(-1, 2), st.floats(0, 1) | st.sampled_from([0.0, 1.0, 1e-300]))
    penalty = rarely(st.sampled_from([0.0, 1e-300, -1e308, 1e308]), st.floats(-4, 4))
    fields = {
        "temperature": rarely(st.sampled_from([1e-300, 1e-40, 1e300, -1.0]), st.floats(0, 4)),
        "top_k": rarely(st.just(10**30), st.integers(-1, 200)),
        "top_p": probability, "min_p": probability, "typical_p": probability,
        "repeat_penalty": penalty, "presence_penalty": penalty, "frequency_penalty": penalty,
        "repeat_last_n": rarely(st.just(10**30), st.integers(-2, 128)),
        "seed": rarely(st.sampled_from([1e30, 2**64, -(2**65)]), st.integers(-1, 2**63 - 1)),
        "stop": st.lists(st.text(min_size=0, max_size=4), max_size=3),
        "num_keep": st.integers(-2, 64),
        "num_predict": field(limits.num_predict, limits.number_junk, one_in=20),
        "num_ctx": field(limits.num_ctx, limits.number_junk, one_in=20),
        "num_batch": field(limits.num_batch, limits.number_junk, one_in=20),
        "num_thread": field(st.sampled_from([0, 1, 2, -1, 40000, 2**31]), limits.number_junk, one_in=20),
        "num_gpu": st.integers(-2, 99), "main_gpu": st.integers(-1, 3), "use_mmap": st.booleans(),
        "mirostat": st.integers(0, 2), "unknown_option": json_values,
    }  # fmt: skip
    return obj({k: inner(v) if k not in ("num_predict", "num_ctx", "num_batch", "num_thread") else v
                for k, v in fields.items()})  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


images = st.just([]) | st.lists(st.binary(max_size=16).map(_b64) | st.just("data:image/png;base64,aGk=") | st.just("%%"), max_size=2)
tool_call = obj({"function": inner(obj({"name": inner(words), "arguments": inner(
    st.dictionaries(words, json_values, max_size=2) | st.sampled_from(['{"x": 1}', "", "[1]", "{nope"]))})),
    "id": inner(words), "type": inner(st.just("function"))})  # fmt: skip
message = obj(
    {"images": inner(rarely(images, st.just([]))), "tool_calls": inner(rarely(st.sampled_from(["abc", [5]]), st.lists(tool_call, max_size=2))),
     "thinking": inner(words), "tool_name": inner(words)},
    required={"role": inner(st.sampled_from(["user", "assistant", "system", "tool", "USER", ""])),
              "content": inner(st.text(max_size=60))},
)  # fmt: skip
tools = st.lists(obj({"type": field(st.just("function")), "function": field(obj(
    {"name": field(words), "description": field(words),
     "parameters": field(st.just({"type": "object", "properties": {"x": {"type": "string"}}}))}))}), max_size=2)  # fmt: skip
schema = st.sampled_from([{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                          {"type": "array"}, {"type": "integer"}, {"enum": ["x", "y"]}])  # fmt: skip
keep_alive = st.sampled_from([0, -1, "5m", "-1m", 1e10, "2600000h", "1s", "", "soon", 2**64, -1e308, "inf"]) | st.integers()


def _common(limits: Limits) -> dict[str, st.SearchStrategy]:
    return {
        "stream": field(st.booleans() | st.sampled_from(["false", "true", ""])),
        "format": field(st.sampled_from(["", "json", "xml"]) | schema),
        "options": field(options(limits)),
        "keep_alive": field(keep_alive),
        "think": field(rarely(st.sampled_from([True, "low", "medium", "high", "max", "extreme"]),
                              st.sampled_from([False, "", None]))),
        "truncate": field(st.booleans()), "shift": field(st.booleans()),
        "logprobs": field(st.booleans()), "top_logprobs": field(rarely(st.sampled_from([-1, 21, 2**64]), st.integers(0, 20))),
    }  # fmt: skip


def model(limits: Limits) -> st.SearchStrategy:
    return field(rarely(st.sampled_from(["nope", "", "a/b/c/d", "../x", "x:y:z"]), st.sampled_from(limits.models)))


def chat(limits: Limits) -> st.SearchStrategy:
    return obj({**_common(limits), "tools": field(tools), "_debug_render_only": field(st.booleans())},
               required={"model": model(limits), "messages": field(rarely(st.just([]), st.lists(message, min_size=1, max_size=3)))})  # fmt: skip


def generate(limits: Limits) -> st.SearchStrategy:
    context = st.lists(st.integers(-2, 2**40) | st.sampled_from([10**12, 1.5]), max_size=4)
    return obj({**_common(limits), "system": field(words), "template": field(words),
                "suffix": field(rarely(words, st.just(""))),
                "context": field(context), "raw": field(st.booleans()), "images": field(rarely(images, st.just([])))},
               required={"model": model(limits), "prompt": field(st.text(max_size=80))})  # fmt: skip


def embed(limits: Limits) -> st.SearchStrategy:
    inputs = st.text(max_size=40) | st.lists(st.text(max_size=20), max_size=3)
    return obj({"input": field(inputs), "truncate": field(st.booleans()), "dimensions": field(st.integers(-1, 8)),
                "options": field(options(limits)), "keep_alive": field(keep_alive)},
               required={"model": model(limits)})  # fmt: skip


def embeddings(limits: Limits) -> st.SearchStrategy:
    return obj({"prompt": field(st.text(max_size=40)), "options": field(options(limits)), "keep_alive": field(keep_alive)},
               required={"model": model(limits)})  # fmt: skip


def show(limits: Limits) -> st.SearchStrategy:
    return obj({"model": model(limits), "name": model(limits), "verbose": field(st.booleans()),
                "system": field(words), "options": field(options(limits))})  # fmt: skip


def v1_chat(limits: Limits) -> st.SearchStrategy:
    part = st.sampled_from([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}},
                            {"type": "image_url", "image_url": "http://x/y.png"}, {"type": "audio"}])  # fmt: skip
    v1_message = obj({"tool_calls": inner(rarely(st.just("abc"), st.lists(tool_call, max_size=2))),
                      "tool_call_id": inner(words), "reasoning": inner(words)},
                     required={"role": inner(st.sampled_from(["user", "assistant", "system", "tool"])),
                               "content": inner(st.text(max_size=40) | st.lists(part, max_size=2))})  # fmt: skip
    return obj(
        {"stream": field(st.booleans()), "stream_options": field(obj({"include_usage": field(st.booleans())})),
         "temperature": field(st.floats(0, 2)), "top_p": field(st.floats(0, 1)),
         "max_tokens": field(limits.num_predict, limits.number_junk), "seed": field(st.integers()),
         "stop": field(words | st.lists(words, max_size=2)), "frequency_penalty": field(st.floats(-2, 2)),
         "presence_penalty": field(st.floats(-2, 2)), "n": field(rarely(st.integers(0, 2), st.just(1))),
         "response_format": field(st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "json_schema"},
                                                   {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}])),
         "tools": field(tools), "reasoning_effort": field(st.sampled_from(["none", "low", "high", "nope"])),
         "reasoning": field(obj({"effort": field(st.sampled_from(["low", "x"]))})),
         "logprobs": field(st.booleans()), "top_logprobs": field(st.integers(-1, 25)), "keep_alive": field(keep_alive)},
        required={"model": model(limits), "messages": field(rarely(st.just([]), st.lists(v1_message, min_size=1, max_size=3)))},
    )  # fmt: skip


def v1_completions(limits: Limits) -> st.SearchStrategy:
    return obj({"stream": field(st.booleans()), "stream_options": field(obj({"include_usage": field(st.booleans())})),
                "max_tokens": field(limits.num_predict, limits.number_junk), "suffix": field(words),
                "logprobs": field(st.integers(-1, 5)), "temperature": field(st.floats(0, 2)), "seed": field(st.integers())},
               required={"model": model(limits), "prompt": field(st.text(max_size=60))})  # fmt: skip


def v1_embeddings(limits: Limits) -> st.SearchStrategy:
    return obj({"input": field(st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=2)),
                "encoding_format": field(st.sampled_from(["float", "base64", "hex"])), "dimensions": field(st.integers(-1, 8))},
               required={"model": model(limits)})  # fmt: skip


# The store's endpoints: names from a scratch namespace (a fuzzer must not delete the model it
# chats with), sources that include that model.
def _scratch(limits: Limits) -> st.SearchStrategy:
    return field(st.sampled_from(["fuzz", "Fuzz:1", "fuzz-copy", "ns/fuzz:x", "fuzz:Latest", "bad name", ""]))


def create(limits: Limits) -> st.SearchStrategy:
    return obj({"system": field(words),
                "template": field(words), "license": field(words | st.lists(words, max_size=2)),
                "parameters": field(obj({"temperature": field(st.floats(0, 2)), "stop": field(st.lists(words, max_size=2))})),
                "messages": field(st.lists(message, max_size=2)), "files": field(st.dictionaries(words, words, max_size=1)),
                "stream": field(st.booleans()), "quantize": field(rarely(st.just("q4_K_M"), st.just("")))},
               required={"model": _scratch(limits),
                         "from": field(st.sampled_from([*limits.models, "fuzz", "/etc/passwd", "x.gguf"]))})  # fmt: skip


def copy(limits: Limits) -> st.SearchStrategy:
    return obj({"source": field(st.sampled_from([*limits.models, "fuzz", "nope"])), "destination": _scratch(limits)})


def delete(limits: Limits) -> st.SearchStrategy:
    return obj({"model": _scratch(limits), "name": _scratch(limits)})


def pull(limits: Limits) -> st.SearchStrategy:
    return obj({"model": _scratch(limits), "name": _scratch(limits), "insecure": field(st.booleans()),
                "stream": field(st.booleans())})  # fmt: skip


ENDPOINTS = {  # name: (method, path, body strategy factory)
    "chat": ("POST", "/api/chat", chat), "generate": ("POST", "/api/generate", generate),
    "embed": ("POST", "/api/embed", embed), "embeddings": ("POST", "/api/embeddings", embeddings),
    "show": ("POST", "/api/show", show),
    "v1_chat": ("POST", "/v1/chat/completions", v1_chat), "v1_completions": ("POST", "/v1/completions", v1_completions),
    "v1_embeddings": ("POST", "/v1/embeddings", v1_embeddings),
    "create": ("POST", "/api/create", create), "copy": ("POST", "/api/copy", copy),
    "delete": ("DELETE", "/api/delete", delete), "pull": ("POST", "/api/pull", pull), "push": ("POST", "/api/push", pull),
}  # fmt: skip
INFERENCE = ("chat", "generate", "embed", "embeddings", "show", "v1_chat", "v1_completions", "v1_embeddings")
STORE = ("create", "copy", "delete", "pull", "push")
