"""Fields of the wrong type or out of range on the native and OpenAI APIs: a 400 naming the field (issue 20, item 14)."""

from __future__ import annotations

import pytest

MSG = [{"role": "user", "content": "hi"}]
CHAT = {"model": "mymoe", "messages": MSG, "stream": False}
GENERATE = {"model": "mymoe", "prompt": "hi", "stream": False}
V1_CHAT = {"model": "mymoe", "messages": MSG}
INT64 = "between -9223372036854775808 and 9223372036854775807"


def field(name: str, kind: str) -> dict:
    return {"error": f'field "{name}" must be of type {kind}'}


@pytest.mark.parametrize(
    "path,body,error",
    [
        # messages[].tool_calls as the adversarial run sent them
        ("/api/chat", {**CHAT, "messages": [{"role": "assistant", "content": "", "tool_calls": "abc"}]},
         field("messages[0].tool_calls", "array")),
        ("/api/chat", {**CHAT, "messages": [{"role": "assistant", "content": "", "tool_calls": [5]}]},
         field("messages[0].tool_calls[0]", "object")),
        ("/api/chat", {**CHAT, "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": 5}]}]},
         field("messages[0].tool_calls[0].function", "object")),
        ("/api/chat", {**CHAT, "messages": [MSG[0], {"role": "assistant", "tool_calls": [{"function": {"name": 7}}]}]},
         field("messages[1].tool_calls[0].function.name", "string")),
        ("/api/chat", {**CHAT, "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}]},
         field("messages[0].tool_calls[0].function.arguments", "object")),
        ("/api/chat", {**CHAT, "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
         {"error": "tool call arguments must be a JSON object: [1]"}),
        ("/api/chat", {**CHAT, "messages": [{"role": 5, "content": "hi"}]}, field("messages[0].role", "string")),
        ("/api/chat", {**CHAT, "messages": [{"role": "user", "content": ["hi"]}]}, field("messages[0].content", "string")),
        ("/api/chat", {**CHAT, "messages": [{"role": "user", "content": "hi", "images": "aGk="}]},
         field("messages[0].images", "array of strings")),
        ("/api/chat", {**CHAT, "messages": ["hi"]}, field("messages[0]", "object")),
        ("/api/chat", {**CHAT, "tools": "all"}, field("tools", "array")),
        ("/api/chat", {**CHAT, "tools": [{"type": "function", "function": "f"}]}, field("tools[0].function", "object")),
        ("/api/chat", {**CHAT, "truncate": "yes"}, field("truncate", "boolean")),
        ("/api/chat", {**CHAT, "logprobs": 1}, field("logprobs", "boolean")),
        ("/api/chat", {**CHAT, "model": 5}, {"error": "invalid model name"}),
        ("/api/chat", {**CHAT, "stream": {"on": True}}, field("stream", "boolean")),
        ("/api/generate", {**GENERATE, "stream": []}, field("stream", "boolean")),
        # generate's own fields
        ("/api/generate", {**GENERATE, "system": 5}, field("system", "string")),
        ("/api/generate", {**GENERATE, "template": {"t": 1}}, field("template", "string")),
        ("/api/generate", {**GENERATE, "suffix": 1}, field("suffix", "string")),
        ("/api/generate", {**GENERATE, "context": [1, -1]}, {"error": f'field "context[1]" must be between 0 and {2**63 - 1}'}),
        ("/api/generate", {**GENERATE, "context": [1.5]}, field("context[0]", "integer")),
        ("/api/generate", {**GENERATE, "context": "1,2"}, field("context", "array")),
        ("/api/generate", {**GENERATE, "raw": "true"}, field("raw", "boolean")),
        ("/api/generate", {**GENERATE, "images": [5]}, {"error": "images must be an array of base64 strings"}),
        # options: seeds past Go's int, which Ollama wraps to a negative (random) seed
        ("/api/chat", {**CHAT, "options": {"seed": 1e30}}, {"error": f'option "seed" must be {INT64}'}),
        ("/api/chat", {**CHAT, "options": {"seed": 2**64}}, {"error": f'option "seed" must be {INT64}'}),
        ("/api/generate", {**GENERATE, "options": {"num_predict": -1e19}}, {"error": f'option "num_predict" must be {INT64}'}),
        ("/api/chat", {**CHAT, "options": [1]}, {"error": "options must be an object"}),
        # embeddings
        ("/api/embed", {"model": "mymoe", "input": "x", "truncate": 0}, field("truncate", "boolean")),
        ("/api/embeddings", {"model": ["mymoe"], "prompt": "x"}, {"error": "invalid model name"}),
    ],
)  # fmt: skip
async def test_native_fields_of_the_wrong_type_are_400s(client, engine, path, body, error):
    r = await client.post(path, json=body)
    assert (r.status, await r.json()) == (400, error)
    assert engine.requests == []  # refused before anything reached the engine


@pytest.mark.parametrize(
    "path,body,message",
    [
        ("/v1/chat/completions", {**V1_CHAT, "stream": True, "stream_options": "x"}, 'field "stream_options" must be of type object'),
        ("/v1/chat/completions", {**V1_CHAT, "stream_options": "x"}, 'field "stream_options" must be of type object'),
        ("/v1/chat/completions", {**V1_CHAT, "stream_options": {"include_usage": "yes"}},
         'field "stream_options.include_usage" must be of type boolean'),
        ("/v1/completions", {"model": "mymoe", "prompt": "hi", "stream_options": ["x"]}, 'field "stream_options" must be of type object'),
        ("/v1/chat/completions", {**V1_CHAT, "messages": [{"role": "assistant", "content": "", "tool_calls": "abc"}]},
         'field "messages[0].tool_calls" must be of type array'),
        ("/v1/chat/completions", {**V1_CHAT, "messages": [{"role": "assistant", "content": "", "tool_calls": [5]}]},
         'field "messages[0].tool_calls[0]" must be of type object'),
        ("/v1/chat/completions", {**V1_CHAT, "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": 5}]}]},
         'field "messages[0].tool_calls[0].function" must be of type object'),
        ("/v1/chat/completions", {**V1_CHAT, "messages": [{"role": "tool", "content": "4", "tool_call_id": ["c"]}]},
         'field "messages[0].tool_call_id" must be of type string'),
        ("/v1/chat/completions", {**V1_CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
         "invalid message part: text must be a string"),
        ("/v1/chat/completions", {**V1_CHAT, "reasoning": "high"}, 'field "reasoning" must be of type object'),
        ("/v1/chat/completions", {**V1_CHAT, "reasoning_effort": ["high"]}, 'field "reasoning_effort" must be of type string'),
        ("/v1/chat/completions", {**V1_CHAT, "response_format": {"type": "json_schema", "json_schema": "s"}},
         'invalid response_format: {"type":"json_schema","json_schema":"s"}'),
        ("/v1/chat/completions", {**V1_CHAT, "seed": 2**64}, f'option "seed" must be {INT64}'),
        ("/v1/chat/completions", {**V1_CHAT, "temperature": "hot"}, 'option "temperature" must be of type number'),
        ("/v1/completions", {"model": "mymoe", "prompt": "hi", "stream": ["yes"]}, 'field "stream" must be of type boolean'),
    ],
)  # fmt: skip
async def test_openai_fields_of_the_wrong_type_are_400s_in_openai_shape(client, engine, path, body, message):
    r = await client.post(path, json=body)
    assert r.status == 400
    assert await r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    assert engine.requests == []


async def test_in_range_values_still_pass(client, engine):
    """The checks refuse types, not values Ollama takes: whole floats as integers, the largest
    int64 seed, stringified tool-call arguments, null for unset."""
    body = {**CHAT, "options": {"seed": 2**63 - 1, "num_predict": 8.0, "temperature": 1e-300},
            "messages": [MSG[0], {"role": "assistant", "content": None, "tool_calls": [
                {"function": {"name": "f", "arguments": '{"x": 1}'}}]}, {"role": "tool", "content": "1", "tool_name": "f"}],
            "truncate": None, "logprobs": False}  # fmt: skip
    r = await client.post("/api/chat", json=body)
    assert r.status == 200, await r.text()
    sampling = engine.requests[-1].sampling
    assert (sampling.seed, sampling.num_predict, sampling.temperature) == (2**63 - 1, 8, 1e-300)
    assert engine.rendered[-1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    r = await client.post("/api/generate", json={**GENERATE, "context": [0, 5.0, 2**40], "system": None})
    assert r.status == 200 and engine.requests[-1].context == (0, 5, 2**40)
