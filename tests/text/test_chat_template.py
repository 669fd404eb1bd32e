"""Chat templates: real GGUF templates vs transformers' apply_chat_template, fallbacks vs llama.cpp."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from backend.text.chat_template import CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplate, ChatTemplateError

GOLDEN = Path(__file__).parent.parent / "data" / "golden"
CONVERSATIONS = json.loads((GOLDEN / "conversations.json").read_text(encoding="utf-8"))["conversations"]
FORMATS = json.loads((GOLDEN / "chat_formats.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


def hf_render(hf, template: str, messages, **kwargs) -> str:
    return hf.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(smollm2_metadata, hf_smollm2, add_generation_prompt):
    tmpl = ChatTemplate.from_metadata(smollm2_metadata)
    assert tmpl.source == smollm2_metadata["tokenizer.chat_template"] == hf_smollm2.chat_template
    for conv in CONVERSATIONS:
        expected = hf_render(hf_smollm2, tmpl.source, conv, add_generation_prompt=add_generation_prompt)
        assert tmpl.render(conv, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gemma3_fallback_matches_transformers_and_llama_cpp(gemma3_metadata, hf_smollm2, add_generation_prompt):
    """The Gemma 3 GGUF carries no template; its vocabulary selects Gemma 3's own."""
    assert "tokenizer.chat_template" not in gemma3_metadata
    tmpl = ChatTemplate.from_metadata(gemma3_metadata)
    assert tmpl.source == GEMMA_TEMPLATE and tmpl.bos_token == "<bos>"
    key = "add_generation_prompt" if add_generation_prompt else "no_generation_prompt"
    for conv, llama_cpp_text in zip(CONVERSATIONS, FORMATS["gemma"][key], strict=True):
        ours = tmpl.render(conv, add_generation_prompt=add_generation_prompt)
        hf = hf_render(hf_smollm2, GEMMA_TEMPLATE, conv, add_generation_prompt=add_generation_prompt, bos_token="<bos>")
        assert ours == hf
        assert ours == "<bos>" + llama_cpp_text  # llama.cpp leaves the BOS to the tokenizer


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chatml_fallback_matches_llama_cpp(smollm2_metadata, add_generation_prompt):
    meta = {k: v for k, v in smollm2_metadata.items() if k != "tokenizer.chat_template"}
    tmpl = ChatTemplate.from_metadata(meta)
    assert tmpl.source == CHATML_TEMPLATE
    key = "add_generation_prompt" if add_generation_prompt else "no_generation_prompt"
    for conv, expected in zip(CONVERSATIONS, FORMATS["chatml"][key], strict=True):
        assert tmpl.render(conv, add_generation_prompt=add_generation_prompt) == expected


# A Qwen/Hermes-style template exercising what Ollama messages carry beyond role and content.
TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
# Tools
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}<|im_start|>assistant
{%- if message.reasoning_content %}
<think>
{{ message.reasoning_content }}
</think>
{%- endif %}
{{ message.content }}
{%- if message.tool_calls is defined %}
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}
{%- endif %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response name="{{ message.name }}">
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>
{%- endif %}
{% endif %}"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & 'later'",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
OLLAMA_MESSAGES = [
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": "", "thinking": "Need the tool.",
     "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "°C"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}", "tool_name": "get_weather"},
]  # fmt: skip
# The same conversation in transformers' (OpenAI) message shape, as the oracle's input.
HF_MESSAGES = [
    {"role": "user", "content": "Weather in Zürich?"},
    {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "°C"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}", "name": "get_weather"},
]  # fmt: skip


@pytest.mark.parametrize("think", [None, True, False])
def test_ollama_messages_tools_and_thinking_match_transformers(hf_smollm2, think):
    tmpl = ChatTemplate(TOOLS_TEMPLATE)
    kwargs = {} if think is None else {"enable_thinking": think}
    expected = hf_render(hf_smollm2, TOOLS_TEMPLATE, HF_MESSAGES, tools=TOOLS, add_generation_prompt=True, **kwargs)
    ours = tmpl.render(OLLAMA_MESSAGES, tools=TOOLS, think=think)
    assert ours == expected
    assert "Weather <now> & 'later'" in ours and '"city": "Zürich"' in ours  # tojson: no escaping, no sorting


def test_raise_exception_and_strftime_now():
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        ChatTemplate(GEMMA_TEMPLATE).render([{"role": "assistant", "content": "first"}])
    from datetime import datetime

    year = ChatTemplate("{{ strftime_now('%Y') }}").render([])
    assert year == datetime.now().strftime("%Y")


def test_loopcontrols_and_generation_blocks():
    src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert ChatTemplate(src).render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "a"


def test_syntax_error_is_one_line():
    with pytest.raises(ChatTemplateError, match="syntax error at line 1"):
        ChatTemplate("{% for m in messages %}")


def test_go_template_override_falls_back_to_gguf_template(smollm2_metadata):
    tmpl = ChatTemplate.from_metadata(smollm2_metadata, override="{{ .System }}{{ range .Messages }}{{ .Content }}{{ end }}")
    assert tmpl.source == smollm2_metadata["tokenizer.chat_template"]
    jinja = ChatTemplate.from_metadata(smollm2_metadata, override="{{ messages[0]['content'] }}!")
    assert jinja.render([{"role": "user", "content": "x"}]) == "x!"
