"""/v1/responses fuzzed over its fields and types on the fake engine: never a 500, errors always in
OpenAI's shape, streams always numbered events ending in a terminal response event."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from .fuzz_harness import check_responses, fuzz_fake_engine
from .wire_strategies import field, inner, json_values, obj, rarely, schema, words

part = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, words),
    st.builds(lambda t: {"type": "output_text", "text": t}, words),
    st.sampled_from([{"type": "input_image", "image_url": "data:image/png;base64,aGk="},
                     {"type": "input_image", "image_url": "https://x/y.png"}, {"type": "input_file", "file_id": "f"},
                     {"type": "refusal", "refusal": "no"}, {"type": "audio"}]),
)  # fmt: skip
content = inner(st.text(max_size=40) | st.lists(inner(part), max_size=3))
item = inner(st.one_of(
    obj({"type": st.just("message")}, required={"role": inner(rarely(st.just("tool"), st.sampled_from(["user", "assistant", "system", "developer"]), 20)),
                                                "content": content}),
    obj({"id": inner(words), "status": inner(words)},
        required={"type": st.just("function_call"), "call_id": inner(words), "name": inner(words),
                  "arguments": inner(rarely(st.sampled_from(["{", "[1]", ""]), st.dictionaries(words, json_values, max_size=2).map(json.dumps), 20))}),
    obj({}, required={"type": st.just("function_call_output"), "call_id": inner(words), "output": content}),
    obj({"summary": inner(st.lists(st.builds(lambda t: {"type": "summary_text", "text": t}, words), max_size=2)),
         "encrypted_content": inner(words)}, required={"type": st.just("reasoning")}),
    st.sampled_from([{"type": "item_reference", "id": "x"}, {"content": "no type"}, {"type": "computer_call"}]),
))  # fmt: skip
tool = inner(rarely(st.sampled_from([{"type": "web_search"}, {"type": "custom", "name": "apply_patch"}]),
                    obj({"description": inner(words), "parameters": inner(schema), "strict": inner(st.booleans())},
                        required={"type": st.just("function"), "name": inner(words)}), 10))  # fmt: skip
body = obj(
    {"instructions": field(words), "tools": field(st.lists(tool, max_size=2)),
     "tool_choice": field(st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"}])),
     "reasoning": field(obj({"effort": field(st.sampled_from(["none", "minimal", "low", "high", "xhigh", "huge"])),
                             "summary": field(st.sampled_from(["auto", "detailed"]))})),
     "max_output_tokens": field(st.integers(-2, 64)), "temperature": field(st.floats(0, 2)), "top_p": field(st.floats(0, 1)),
     "text": field(obj({"format": field(st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "json_schema"}])
                                        | st.builds(lambda s: {"type": "json_schema", "name": "a", "schema": s}, schema))})),
     "previous_response_id": rarely(words, st.none(), 20), "background": rarely(st.just(True), st.just(False), 20), "truncation": field(st.sampled_from(["auto", "disabled"])),
     "metadata": field(st.just({"k": "v"})), "store": field(st.booleans()), "parallel_tool_calls": field(st.booleans()),
     "include": field(st.just(["reasoning.encrypted_content"]))},
    required={"stream": field(st.sampled_from([True, False])),
              "model": inner(rarely(st.sampled_from(["nope", "", "a/b/c/d"]), st.sampled_from(["mymoe", "plain"]), 20)),
              "input": inner(st.text(max_size=40) | st.lists(item, max_size=4))},
)  # fmt: skip


def test_fuzz_responses():
    fuzz_fake_engine("/v1/responses", body, 300, check_responses)
