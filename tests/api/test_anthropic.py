"""/v1/messages through the official `anthropic` client (the oracle for shapes and the event
sequence) and raw HTTP, over the fake engine and, end to end, over SmolLM2."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from backend.interface import Chunk

from .disconnects import assert_disconnect_cancels
from .fake_engine import METRICS

CALL = Chunk(tool_calls=({"function": {"name": "get_weather", "arguments": {"location": "Paris", "days": 2}}},))
WEATHER = {"name": "get_weather", "description": "Weather in a place",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}  # fmt: skip
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def claude(client):
    return anthropic.AsyncAnthropic(base_url=str(client.make_url("")), api_key="ignored", max_retries=0)


async def test_create(claude, engine):
    # The SDK no longer names the sampling fields; Claude Code and older SDKs still send them.
    reply = await claude.messages.create(model="mymoe", max_tokens=5, system="Be brief.", messages=HI,
                                         stop_sequences=["x", "y"], metadata={"user_id": "u1"},
                                         extra_body={"temperature": 0.2, "top_p": 0.5, "top_k": 7})  # fmt: skip
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "mymoe"
    assert reply.id.startswith("msg_") and [b.type for b in reply.content] == ["text"]
    assert reply.content[0].text == "Hello wörld" and reply.stop_reason == "end_turn"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (3, 2)  # the native prompt_eval_count, eval_count
    assert engine.rendered[-1]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    s = engine.requests[-1].sampling
    assert (s.num_predict, s.temperature, s.top_p, s.top_k, s.stop) == (5, 0.2, 0.5, 7, ("x", "y"))


async def test_system_blocks_and_content_blocks(claude, engine):
    await claude.messages.create(
        model="mymoe", max_tokens=5,
        system=[{"type": "text", "text": "One. "}, {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                  {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}])  # fmt: skip
    assert engine.rendered[-1]["messages"] == [
        {"role": "system", "content": "One. Two."}, {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]  # fmt: skip


async def test_length_is_max_tokens(claude, engine):
    engine.script = [Chunk(content="Hel"), Chunk(done=True, done_reason="length", metrics=METRICS)]
    reply = await claude.messages.create(model="mymoe", max_tokens=1, messages=HI)
    assert reply.stop_reason == "max_tokens" and reply.content[0].text == "Hel"


async def test_matched_stop_string_is_stop_sequence(claude, client, engine):
    """Anthropic's stop_reason "stop_sequence" with the matched string, streamed and not, when the
    engine names the stop that ended it; the native API keeps Ollama's done_reason "stop" alone."""
    engine.script = [Chunk(content="Hel"), Chunk(done=True, done_reason="stop", stop_sequence="y", metrics=METRICS)]
    reply = await claude.messages.create(model="mymoe", max_tokens=9, messages=HI, stop_sequences=["x", "y"])
    assert (reply.stop_reason, reply.stop_sequence, reply.content[0].text) == ("stop_sequence", "y", "Hel")
    async with claude.messages.stream(model="mymoe", max_tokens=9, messages=HI, stop_sequences=["y"]) as stream:
        final = await stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "y")
    native = await client.post("/api/chat", json={"model": "mymoe", "messages": HI, "stream": False})
    body = await native.json()
    assert body["done_reason"] == "stop" and "stop_sequence" not in body
    engine.script = None  # end of generation: end_turn and a null stop_sequence
    reply = await claude.messages.create(model="mymoe", max_tokens=9, messages=HI, stop_sequences=["y"])
    assert (reply.stop_reason, reply.stop_sequence) == ("end_turn", None)


async def test_stream_thinking_then_text(claude, engine):
    engine.script = [Chunk(thinking="Let me "), Chunk(thinking="see."), Chunk(content="Hel"), Chunk(content="lo"),
                     Chunk(done=True, done_reason="stop", metrics=METRICS)]  # fmt: skip
    async with claude.messages.stream(model="mymoe", max_tokens=50, messages=HI,
                                      thinking={"type": "enabled", "budget_tokens": 1024}) as stream:  # fmt: skip
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello" and engine.rendered[-1]["think"] is True
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me see." and final.content[1].text == "Hello"
    assert final.stop_reason == "end_turn" and (final.usage.input_tokens, final.usage.output_tokens) == (3, 2)


async def test_stream_event_sequence(claude, engine):
    engine.script = [Chunk(thinking="hmm"), Chunk(content="Hi"), CALL, Chunk(done=True, done_reason="stop", metrics=METRICS)]
    stream = await claude.messages.create(model="mymoe", max_tokens=50, messages=HI, tools=[WEATHER], stream=True)
    events = [e async for e in stream]
    shown = [(e.type, getattr(e, "index", None), getattr(getattr(e, "delta", None), "type", None)
              or getattr(getattr(e, "content_block", None), "type", None)) for e in events]  # fmt: skip
    assert shown == [  # the SDK drops the ping (raw framing test below)
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None),
        ("message_delta", None, None), ("message_stop", None, None)]  # fmt: skip
    assert events[-2].delta.stop_reason == "tool_use" and events[-2].usage.output_tokens == 2


async def test_tool_use_round_trip(claude, engine):
    engine.script = [CALL, Chunk(done=True, done_reason="stop", metrics=METRICS)]
    question = {"role": "user", "content": "Weather in Paris?"}
    reply = await claude.messages.create(model="mymoe", max_tokens=50, messages=[question], tools=[WEATHER])
    assert reply.stop_reason == "tool_use"
    use = reply.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"location": "Paris", "days": 2}
    assert use.id.startswith("call_")
    tool = engine.rendered[-1]["tools"]
    assert tool == [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a place",
                                                      "parameters": WEATHER["input_schema"]}}]  # fmt: skip
    engine.script = None
    result = {"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "sunny"}]}
    answer = await claude.messages.create(
        model="mymoe", max_tokens=50, tools=[WEATHER],
        messages=[question, {"role": "assistant", "content": reply.content},
                  {"role": "user", "content": [result, {"type": "text", "text": "And tomorrow?"}]}])  # fmt: skip
    assert answer.content[0].text == "Hello wörld"
    assert engine.rendered[-1]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": use.id, "function": {"name": "get_weather", "arguments": {"location": "Paris", "days": 2}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": use.id, "tool_name": "get_weather"},
        {"role": "user", "content": "And tomorrow?"}]  # fmt: skip


async def test_streamed_tool_use_is_parsed_by_the_sdk(claude, engine):
    engine.script = [CALL, Chunk(done=True, done_reason="stop", metrics=METRICS)]
    async with claude.messages.stream(model="mymoe", max_tokens=50, messages=HI, tools=[WEATHER]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"location": "Paris", "days": 2}


async def test_thinking_settings(claude, engine):
    await claude.messages.create(model="mymoe", max_tokens=5, messages=HI, thinking={"type": "disabled"})
    assert engine.rendered[-1]["think"] is False
    # Claude Code asks every model to think: one that cannot answers without thinking, as in Ollama.
    await claude.messages.create(model="plain", max_tokens=5, messages=HI, thinking={"type": "enabled", "budget_tokens": 1024})
    assert engine.rendered[-1]["think"] is None
    # A thinking block sent back is the assistant's reasoning in the history.
    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                                 {"type": "text", "text": "a"}]},
               {"role": "user", "content": "q2"}]  # fmt: skip
    await claude.messages.create(model="mymoe", max_tokens=5, messages=history)
    assert engine.rendered[-1]["messages"][1] == {"role": "assistant", "content": "a", "thinking": "hmm"}


async def test_structured_output_and_effort(claude, engine):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    await claude.messages.create(model="mymoe", max_tokens=5, messages=HI,
                                 output_config={"effort": "xhigh", "format": {"type": "json_schema", "schema": schema}})
    assert engine.requests[-1].format == schema and engine.rendered[-1]["think"] == "high"


async def test_tool_choice_none_offers_no_tools(claude, engine):
    await claude.messages.create(model="mymoe", max_tokens=5, messages=HI, tools=[WEATHER], tool_choice={"type": "none"})
    assert engine.rendered[-1]["tools"] is None
    await claude.messages.create(model="mymoe", max_tokens=5, messages=HI, tools=[WEATHER], tool_choice={"type": "auto"})
    assert engine.rendered[-1]["tools"][0]["function"]["name"] == "get_weather"


async def test_images_base64_only(claude, engine):
    png = "iVBORw0KGgo="
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    with pytest.raises(anthropic.BadRequestError) as e:  # the fake models have no vision
        await claude.messages.create(model="mymoe", max_tokens=5, messages=[{"role": "user", "content": [image]}])
    assert e.value.body["error"] == {"type": "invalid_request_error", "message": '"mymoe" does not support images'}
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError) as e:
        await claude.messages.create(model="mymoe", max_tokens=5, messages=[{"role": "user", "content": [url]}])
    assert "Only base64 images are supported" in e.value.body["error"]["message"]


async def test_errors_have_anthropic_shape(claude, client, engine):
    with pytest.raises(anthropic.NotFoundError) as e:
        await claude.messages.create(model="nope", max_tokens=5, messages=HI)
    assert e.value.body["type"] == "error" and e.value.body["error"] == {"type": "not_found_error",
                                                                         "message": "model 'nope' not found"}  # fmt: skip
    cases = [({"model": "mymoe", "messages": HI}, "max_tokens is required and must be positive"),
             ({"model": "mymoe", "max_tokens": 0, "messages": HI}, "max_tokens is required and must be positive"),
             ({"max_tokens": 5, "messages": HI}, "model is required"),
             ({"model": "mymoe", "max_tokens": 5, "messages": []}, "messages is required"),
             ({"model": "mymoe", "max_tokens": "5", "messages": HI}, 'field "max_tokens" must be of type integer'),
             ({"model": "mymoe", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
              'messages[0].role: must be "user" or "assistant", got "system"'),
             ({"model": "mymoe", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
              'messages[0].content[0]: content blocks of type "document" are not supported'),
             ({"model": "mymoe", "max_tokens": 5, "messages": HI, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
              'tools[0]: tool type "web_search_20250305" is not supported, only custom tools'),
             ({"model": "mymoe", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]},
              "tool_use block missing required 'id' field")]  # fmt: skip
    for body, message in cases:
        r = await client.post("/v1/messages", json=body)
        reply = await r.json()
        assert r.status == 400 and reply["type"] == "error", body
        assert reply["error"] == {"type": "invalid_request_error", "message": message}
    r = await client.post("/v1/messages", data=b"{", headers={"Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"
    # Ollama lists count_tokens as not supported: a 404, still in Anthropic's shape.
    r = await client.post("/v1/messages/count_tokens", json={"model": "mymoe", "messages": HI})
    assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"


async def test_error_mid_stream_is_an_error_event(claude, engine):
    engine.fail_after = 1
    with pytest.raises(anthropic.APIStatusError) as e:
        async with claude.messages.stream(model="mymoe", max_tokens=50, messages=HI) as stream:
            async for _ in stream:
                pass
    assert e.value.body == {"type": "error", "error": {"type": "api_error", "message": "boom mid-stream"}}


async def test_raw_sse_framing(client, engine):
    r = await client.post("/v1/messages", json={"model": "mymoe", "max_tokens": 5, "messages": HI, "stream": True},
                          headers={"anthropic-version": "2023-06-01", "x-api-key": "ollama"})  # fmt: skip
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    frames = (await r.text()).split("\n\n")
    assert frames[-1] == "" and all(f.startswith("event: ") for f in frames[:-1])
    names = []
    for frame in frames[:-1]:
        name, data = frame.split("\n")
        names.append(name.removeprefix("event: "))
        assert orjson.loads(data.removeprefix("data: "))["type"] == names[-1]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]


def test_real_model_streams_through_the_anthropic_client(smollm2_server):
    client = anthropic.Anthropic(base_url=smollm2_server.url, api_key="ollama", max_retries=0)
    question = [{"role": "user", "content": "What is 2+2?"}]  # a golden prompt: llama.cpp's answer
    greedy = {"extra_body": {"temperature": 0}}
    reply = client.messages.create(model="smollm2", max_tokens=16, messages=question, **greedy)
    assert reply.content[0].text == "The answer to this classic math problem is 4."
    assert reply.stop_reason == "end_turn" and reply.usage.output_tokens > 0 and reply.usage.input_tokens > 0
    with client.messages.stream(model="smollm2", max_tokens=16, messages=question, **greedy) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == reply.content[0].text and final.usage == reply.usage
    short = client.messages.create(model="smollm2", max_tokens=3, messages=question, **greedy)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    cut = client.messages.create(model="smollm2", max_tokens=16, messages=question,
                                 stop_sequences=["nowhere", " classic"], **greedy)  # fmt: skip
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", " classic")
    assert cut.content[0].text == "The answer to this"


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_generation(client, engine, stream):
    """Claude Code's Esc closes the connection: the generation behind it stops, streaming or not."""
    body = {"model": "mymoe", "max_tokens": 99, "messages": HI}
    await assert_disconnect_cancels(client, engine, "/v1/messages", body, stream)
