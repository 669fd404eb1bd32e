"""/v1/messages fuzzed over its fields and types on the fake engine: never a 500, errors always in
Anthropic's shape, streams always Anthropic's framing ending in message_stop."""

from __future__ import annotations

from hypothesis import strategies as st

from .fuzz_harness import check_messages, fuzz_fake_engine
from .wire_strategies import field, inner, json_values, obj, rarely, schema, words

text_block = st.builds(lambda t: {"type": "text", "text": t}, words)
blocks = st.lists(inner(st.one_of(
    text_block,
    st.sampled_from([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}},
                     {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}, {"type": "image"},
                     {"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "redacted_thinking", "data": "x"},
                     {"type": "document", "source": {}}, {"type": "tool_use", "name": "f"}]),
    obj({"id": inner(words), "name": inner(words), "input": inner(st.dictionaries(words, json_values, max_size=2))},
        required={"type": st.just("tool_use")}),
    obj({"tool_use_id": inner(words), "is_error": inner(st.booleans()),
         "content": inner(words | st.lists(text_block, max_size=2))}, required={"type": st.just("tool_result")}),
)), max_size=3)  # fmt: skip
message = obj({}, required={"role": inner(rarely(st.sampled_from(["system", "USER"]), st.sampled_from(["user", "assistant"]), 20)),
                            "content": inner(st.text(max_size=40) | blocks)})  # fmt: skip
tool = obj({"type": inner(rarely(st.sampled_from(["web_search_20250305", "bash_20250124"]), st.just("custom"), 20)),
            "description": inner(words), "input_schema": inner(schema)}, required={"name": inner(words)})  # fmt: skip
body = obj(
    {"system": field(words | st.lists(text_block, max_size=2)),
     "temperature": field(st.floats(0, 1)), "top_p": field(st.floats(0, 1)), "top_k": field(st.integers(-1, 100)),
     "stop_sequences": field(st.lists(words, max_size=2)), "tools": field(st.lists(tool, max_size=2)),
     "tool_choice": field(st.sampled_from([{"type": "auto"}, {"type": "none"}, {"type": "any"}, {"type": "tool", "name": "f"}])),
     "thinking": field(st.sampled_from([{"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"},
                                        {"type": "adaptive"}, {"type": "enabled", "budget_tokens": "lots"}])),
     "metadata": field(st.just({"user_id": "u"})),
     "output_config": field(obj({"effort": field(st.sampled_from(["low", "xhigh", "max", "nope"])),
                                 "format": field(st.builds(lambda s: {"type": "json_schema", "schema": s}, schema))}))},
    required={"stream": field(st.sampled_from([True, False])), "model": inner(rarely(st.sampled_from(["nope", "", "a/b/c/d"]), st.sampled_from(["mymoe", "plain"]), 20)),
              "max_tokens": inner(rarely(st.integers(-2, 0), st.integers(1, 64), 20)),
              "messages": inner(rarely(st.just([]), st.lists(message, min_size=1, max_size=3), 20))},
)  # fmt: skip


def test_fuzz_messages():
    fuzz_fake_engine("/v1/messages", body, 300, check_messages)
