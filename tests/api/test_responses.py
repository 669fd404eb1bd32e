"""/v1/responses through the official `openai` client (its stream accumulator checks every event's
order and identity) and raw HTTP, over the fake engine and, end to end, over SmolLM2."""

from __future__ import annotations

import openai
import orjson
import pytest

from backend.interface import Chunk

from .disconnects import assert_disconnect_cancels
from .fake_engine import METRICS

CALL = Chunk(tool_calls=({"function": {"name": "get_weather", "arguments": {"location": "Paris"}}},))
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a place",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}  # fmt: skip
DONE = Chunk(done=True, done_reason="stop", metrics=METRICS)


@pytest.fixture
async def oai(client):
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="ignored", max_retries=0)


async def test_create_with_a_string(oai, engine):
    reply = await oai.responses.create(model="mymoe", input="Write a poem", instructions="Be brief.",
                                       max_output_tokens=5, temperature=0.2, top_p=0.5)  # fmt: skip
    assert reply.object == "response" and reply.status == "completed" and reply.id.startswith("resp_")
    assert reply.output_text == "Hello wörld" and reply.model == "mymoe" and reply.instructions == "Be brief."
    assert [o.type for o in reply.output] == ["message"] and reply.output[0].role == "assistant"
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.total_tokens) == (3, 2, 5)
    assert engine.rendered[-1]["messages"] == [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Write a poem"}]  # fmt: skip
    s = engine.requests[-1].sampling
    assert (s.num_predict, s.temperature, s.top_p) == (5, 0.2, 0.5)
    await oai.responses.create(model="mymoe", input="x")
    assert engine.requests[-1].sampling.temperature == 1.0  # OpenAI's default, as Ollama sets it


async def test_input_items(oai, engine):
    await oai.responses.create(model="mymoe", input=[
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
        {"role": "user", "content": "d"}])  # fmt: skip
    assert engine.rendered[-1]["messages"] == [
        {"role": "system", "content": "Rules."}, {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]  # fmt: skip


async def test_function_call_round_trip(oai, engine):
    engine.script = [CALL, DONE]
    first = await oai.responses.create(model="mymoe", input="Weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    assert [o.type for o in first.output] == ["function_call"] and call.status == "completed"
    assert call.name == "get_weather" and orjson.loads(call.arguments) == {"location": "Paris"}
    assert engine.rendered[-1]["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a place", "parameters": WEATHER["parameters"]}}]  # fmt: skip
    engine.script = None
    history = [{"role": "user", "content": "Weather in Paris?"}, *[o.model_dump() for o in first.output],
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]  # fmt: skip
    second = await oai.responses.create(model="mymoe", input=history, tools=[WEATHER])
    assert second.output_text == "Hello wörld"
    assert engine.rendered[-1]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": call.call_id, "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": call.call_id, "tool_name": "get_weather"}]  # fmt: skip


async def test_stream_text(oai, engine):
    engine.script = [Chunk(content="Hel"), Chunk(content="lo"), DONE]
    async with oai.responses.stream(model="mymoe", input="hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas == ["Hel", "lo"] and final.output_text == "Hello" and final.status == "completed"
    assert final.usage.total_tokens == 5


async def test_stream_reasoning_text_and_call(oai, engine):
    engine.script = [Chunk(thinking="Let me "), Chunk(thinking="see."), Chunk(content="Checking."), CALL, DONE]
    stream = await oai.responses.create(model="mymoe", input="hi", tools=[WEATHER], reasoning={"effort": "high"},
                                        stream=True)  # fmt: skip
    events = [e async for e in stream]
    assert engine.rendered[-1]["think"] == "high"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]  # fmt: skip
    final = events[-1].response
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[0].summary[0].text == "Let me see." and final.output_text == "Checking."
    assert final.reasoning.effort == "high"
    # The SDK's accumulator agrees (it refuses events out of order or with changed identities).
    engine.script = [Chunk(thinking="hmm"), Chunk(content="ok"), CALL, DONE]
    async with oai.responses.stream(model="mymoe", input="hi", tools=[WEATHER]) as s:
        accumulated = await s.get_final_response()
    assert [o.type for o in accumulated.output] == ["reasoning", "message", "function_call"]
    assert orjson.loads(accumulated.output[2].arguments) == {"location": "Paris"}


async def test_reasoning_goes_back_as_thinking(oai, engine):
    engine.script = [Chunk(thinking="hmm"), CALL, DONE]
    first = await oai.responses.create(model="mymoe", input="q", tools=[WEATHER])
    engine.script = None
    history = [{"role": "user", "content": "q"}, *[o.model_dump(exclude_none=True) for o in first.output],
               {"type": "function_call_output", "call_id": first.output[1].call_id, "output": "sunny"}]  # fmt: skip
    await oai.responses.create(model="mymoe", input=history, tools=[WEATHER], reasoning={"effort": "none"})
    assistant = engine.rendered[-1]["messages"][1]
    assert assistant["role"] == "assistant" and assistant["thinking"] == "hmm" and engine.rendered[-1]["think"] is False


async def test_max_output_tokens_is_incomplete(oai, engine):
    engine.script = [Chunk(content="Hel"), Chunk(done=True, done_reason="length", metrics=METRICS)]
    reply = await oai.responses.create(model="mymoe", input="hi", max_output_tokens=1)
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == "Hel"
    stream = await oai.responses.create(model="mymoe", input="hi", max_output_tokens=1, stream=True)
    assert [e.type async for e in stream][-1] == "response.incomplete"


async def test_json_schema_format_and_tool_choice(oai, engine):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    reply = await oai.responses.create(model="mymoe", input="x", text={"format": {"type": "json_schema", "name": "a",
                                                                                  "schema": schema}})  # fmt: skip
    assert engine.requests[-1].format == schema and reply.text.format.type == "json_schema"
    await oai.responses.create(model="mymoe", input="x", text={"format": {"type": "json_object"}})
    assert engine.requests[-1].format == "json"
    await oai.responses.create(model="mymoe", input="x", tools=[WEATHER], tool_choice="none")
    assert engine.rendered[-1]["tools"] is None
    # Only function tools reach the model: a web search here has nothing to run it.
    await oai.responses.create(model="mymoe", input="x", tools=[WEATHER, {"type": "web_search"}])
    assert [t["function"]["name"] for t in engine.rendered[-1]["tools"]] == ["get_weather"]


async def test_errors(oai, client, engine):
    with pytest.raises(openai.NotFoundError) as e:
        await oai.responses.create(model="mymoe", input="x", previous_response_id="resp_123")
    assert e.value.code == "previous_response_not_found" and e.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError) as e:
        await oai.responses.create(model="nope", input="x")
    assert e.value.body == {"message": "model 'nope' not found", "type": "not_found_error", "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as e:
        await oai.responses.create(model="plain", input="x", reasoning={"effort": "high"})
    assert e.value.body["message"] == '"plain" does not support thinking'
    cases = [({"input": "x"}, "model is required"),
             ({"model": "mymoe"}, "input is required"),
             ({"model": "mymoe", "input": "x", "reasoning": {"effort": "huge"}}, "invalid reasoning value: 'huge'"),
             ({"model": "mymoe", "input": "x", "background": True}, "background and conversation are not supported"),
             ({"model": "mymoe", "input": "x", "conversation": "conv_1"}, "background and conversation are not supported"),
             ({"model": "mymoe", "input": [{"type": "item_reference", "id": "x"}]}, "item references need stored responses"),
             ({"model": "mymoe", "input": [{"content": "x"}]}, "missing required 'type' field"),
             ({"model": "mymoe", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
              "file inputs are not currently supported"),
             ({"model": "mymoe", "input": [{"role": "user", "content": [{"type": "input_image",
                                                                         "image_url": "https://x/a.png"}]}]},
              "image URLs and file ids are not supported"),
             ({"model": "mymoe", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]},
              "failed to parse function call arguments"),
             ({"model": "mymoe", "input": [{"type": "reasoning", "summary": 5}]}, 'field "input[0].summary" must be of type array'),
             ({"model": "mymoe", "input": "x", "max_output_tokens": "5"}, 'field "max_output_tokens" must be of type integer')]  # fmt: skip
    for body, message in cases:
        r = await client.post("/v1/responses", json=body)
        reply = await r.json()
        assert r.status == 400 and reply["error"]["type"] == "invalid_request_error", body
        assert message in reply["error"]["message"], (body, reply)


async def test_failure_mid_stream_is_response_failed(oai, engine):
    engine.fail_after = 1
    stream = await oai.responses.create(model="mymoe", input="hi", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
    assert events[-1].response.error.message == "boom mid-stream"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_real_model_through_the_responses_api(smollm2_server):
    client = openai.OpenAI(base_url=f"{smollm2_server.url}/v1", api_key="none", max_retries=0)
    # The golden prompt: llama.cpp's greedy answer (top_p 1.0, which the chat completions test gets by default).
    ask = {"model": "smollm2", "input": "What is 2+2?", "temperature": 0, "top_p": 1.0, "max_output_tokens": 16}
    reply = client.responses.create(**ask)
    assert reply.output_text == "The answer to this classic math problem is 4." and reply.status == "completed"
    with client.responses.stream(**ask) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == reply.output_text and final.usage.output_tokens == reply.usage.output_tokens


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_generation(client, engine, stream):
    """Codex's Ctrl-C closes the connection: the generation behind it stops, streaming or not."""
    await assert_disconnect_cancels(client, engine, "/v1/responses", {"model": "mymoe", "input": "hi"}, stream)
