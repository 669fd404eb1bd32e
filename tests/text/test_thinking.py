"""Streaming <think> and <tool_call> splitters: same result however the text is cut into deltas."""

from __future__ import annotations

import itertools
import json

import pytest

from backend.text.thinking import ThinkingParser, ToolCallParser


def cuts(text: str):
    """Every way of cutting text into 1, 2 or 3 deltas, plus one char at a time."""
    n = len(text)
    yield [text]
    for i in range(1, n):
        yield [text[:i], text[i:]]
    for i, j in itertools.combinations(range(1, n), 2):
        if n <= 40:
            yield [text[:i], text[i:j], text[j:]]
    yield list(text)


def run_thinking(deltas, **kw) -> tuple[str, str]:
    parser = ThinkingParser(**kw)
    thinking, content = "", ""
    for d in deltas:
        t, c = parser.push(d)
        thinking, content = thinking + t, content + c
    t, c = parser.flush()
    return thinking + t, content + c


THINKING_CASES = [
    # (text, opened, expected thinking, expected content)
    ("<think>\nplan it\n</think>\n\nThe answer.", False, "plan it\n", "The answer."),
    ("  <think>a<b</think>c", False, "a<b", "c"),
    ("no reasoning here </think> at all", False, "", "no reasoning here </think> at all"),
    ("<thin>not a tag", False, "", "<thin>not a tag"),
    ("\n\nplain", False, "", "\n\nplain"),
    ("reasoning first</think>\nthen content", True, "reasoning first", "then content"),
    ("<think>redundant tag</think>ok", True, "redundant tag", "ok"),
    ("still thinking when cut off", True, "still thinking when cut off", ""),
    ("<think>unterminated </thi", False, "unterminated </thi", ""),
    ("<think></think>", False, "", ""),
    ("<think>x</think><think>y</think>", False, "x", "<think>y</think>"),
    ("", True, "", ""),
    ("<", False, "", "<"),
]


@pytest.mark.parametrize("text,opened,thinking,content", THINKING_CASES)
def test_thinking_split_at_every_position(text, opened, thinking, content):
    for deltas in cuts(text):
        assert run_thinking(deltas, opened=opened) == (thinking, content), deltas


def test_thinking_streams_before_the_close_tag_arrives():
    parser = ThinkingParser()
    assert parser.push("<think>first ") == ("first ", "")
    assert parser.push("part </") == ("part ", "")  # "</" may start </think>: held back
    assert parser.in_thinking
    assert parser.push("b> more</think>Done") == ("</b> more", "Done")
    assert not parser.in_thinking


def test_custom_tags():
    assert run_thinking(["◁think▷why◁/think▷", "so"], open_tag="◁think▷", close_tag="◁/think▷") == ("why", "so")


def run_tools(deltas) -> tuple[str, list]:
    parser = ToolCallParser()
    content, calls = "", []
    for d in deltas:
        c, found = parser.push(d)
        content, calls = content + c, calls + found
    c, found = parser.flush()
    return content + c, calls + found


def call(name, **arguments):
    return {"function": {"name": name, "arguments": arguments}}


TOOL_CASES = [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "", [call("get_weather", city="Paris")]),
    ('Sure.<tool_call>{"name": "a", "arguments": {}}</tool_call> and <tool_call>{"name": "b", "arguments": {"x": [1, {"y": null}]}}</tool_call>!',
     "Sure. and !", [call("a"), call("b", x=[1, {"y": None}])]),
    ('<tool_call>{"name": "s", "arguments": "{\\"q\\": \\"<tool_call>\\"}"}</tool_call>',
     "", [call("s", q="<tool_call>")]),
    ('<tool_call>{"name": "p", "parameters": {"k": 1}}', "", [call("p", k=1)]),
    ("<tool_call>not json</tool_call>tail", "<tool_call>not json</tool_call>tail", []),
    ("<tool_call>{broken", "<tool_call>{broken", []),
    ("a < b and <tool_", "a < b and <tool_", []),
]  # fmt: skip


@pytest.mark.parametrize("text,content,calls", TOOL_CASES)
def test_tool_calls_split_at_every_position(text, content, calls):
    for deltas in cuts(text):
        assert run_tools(deltas) == (content, calls), deltas


def test_tool_call_arguments_are_objects_in_ollamas_shape():
    content, calls = run_tools(['<tool_call>{"name": "f", "arguments": {"n": 2}}</tool_call>'])
    assert calls[0]["function"]["arguments"] == {"n": 2}
    assert json.loads(json.dumps(calls)) == calls


def test_prompt_opens_thinking():
    from backend.text.thinking import prompt_opens_thinking

    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # Qwen3, thinking off
    assert not prompt_opens_thinking("<|im_start|>assistant\n")
    assert not prompt_opens_thinking("<think>old</think> user text <|im_start|>assistant\n")
    # The parser for such a prompt takes the model's first bytes as reasoning.
    assert run_thinking(["step one", "</think>", "answer"], opened=True) == ("step one", "answer")


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_real_token_stream_through_detokenizer_and_both_parsers(model, smollm2_tokenizer, gemma3_tokenizer):
    """Model output arrives token by token: tags and multi-byte characters fall across tokens."""
    from backend.text.tokenizer import IncrementalDetokenizer

    tok = {"smollm2": smollm2_tokenizer, "gemma3": gemma3_tokenizer}[model]
    output = ('<think>\nThe user wants 🦙 weather in 東京.\n</think>\n\nChecking.'
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>')  # fmt: skip
    ids = tok.encode(output, add_special=False, parse_special=False)
    detok, thinking_parser, tools = IncrementalDetokenizer(tok), ThinkingParser(), ToolCallParser()
    thinking, content, calls = "", "", []

    def feed(t: str, c: str, final: bool = False) -> None:
        nonlocal thinking, content, calls
        c, found = tools.push(c)
        if final:
            rest, more = tools.flush()
            c, found = c + rest, found + more
        thinking, content, calls = thinking + t, content + c, calls + found

    for i in ids:
        feed(*thinking_parser.push(detok.push(i)))
    feed(*thinking_parser.push(detok.flush()))
    feed(*thinking_parser.flush(), final=True)
    assert thinking == "The user wants 🦙 weather in 東京.\n"
    assert content == "Checking."
    assert calls == [call("get_weather", city="東京")]
