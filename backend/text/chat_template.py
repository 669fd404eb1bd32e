"""The GGUF's Jinja chat template, rendered in jinja2's immutable sandbox with transformers' conventions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
import logging
from datetime import datetime
from typing import Any, Iterable

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

__all__ = ["ChatTemplate", "ChatTemplateError", "TemplateLimitError", "TemplateSource", "TemplateSyntaxError", "SecurityError", "CHATML_TEMPLATE", "GEMMA_TEMPLATE"]

log = logging.getLogger(__name__)

# For GGUFs without `tokenizer.chat_template`: ChatML, the most common format (llama.cpp's
# fallback too), unless the vocabulary shows another turn format we know.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Gemma 3's own template (google/gemma-3-*-it tokenizer_config.json); its GGUFs often lack it.
GEMMA_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


class ChatTemplateError(ValueError):
    """The template is broken or rejected the conversation (its raise_exception message)."""


class TemplateSyntaxError(ChatTemplateError):
    """The template does not compile: the model's template is broken, whatever the messages."""


class TemplateLimitError(ChatTemplateError):
    """The template ran past a limit (its output, a sequence or power it builds, its time or its
    memory): the template is at fault, not the conversation."""


class _GenerationTracker(Extension):
    """Accepts transformers' {% generation %}...{% endgeneration %} blocks (assistant-mask
    markers used by some training templates) and renders their body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _NoTemplates(jinja2.BaseLoader):
    def get_source(self, environment: jinja2.Environment, template: str):
        raise SecurityError(f"chat templates may not import or include other templates ('{template}')")


class _GuardedUndefined(jinja2.Undefined):
    """Undefined names stay falsy and print as "" (templates test `tools is defined`), but
    calling one (open(), __import__()) or printing a blocked attribute (reached through the
    attr filter or str.format) is refused outright instead of rendering as empty."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()  # no walking on from a blocked attribute
        if name in ("unsafe_callable", "alters_data"):
            return False  # the sandbox asks before calling; answer so that __call__ is reached
        if name == "jinja_pass_arg":
            raise AttributeError(name)  # jinja probes this with hasattr() before any call
        return super().__getattr__(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise SecurityError(f"chat templates may only call the functions they are given, not '{self._undefined_name}'")

    def __str__(self) -> str:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()
        return super().__str__()


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:  # fmt: skip
    # transformers' tojson: plain json.dumps, so no HTML escaping of <>&' and key order kept
    # (jinja's own filter escapes and sorts, which changes tool schemas the model was trained on).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# The longest string or list one `*` may build, and the largest power: past them a template
# would spend seconds and gigabytes in one C call, where neither a deadline nor a check runs.
MAX_SEQUENCE = 2**24
MAX_EXPONENT = 4096


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox whose `*` and `**` are checked before they run. Intercepting them
    also keeps jinja from folding constants such as 'a'*4000000000 while it compiles."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_SEQUENCE:
                    raise TemplateLimitError(f"chat template builds a sequence of {len(seq) * n} items")
        elif operator == "**" and isinstance(left, int) and abs(left) > 1 and isinstance(right, (int, float)):
            if abs(right) > MAX_EXPONENT:
                raise TemplateLimitError(f"chat template raises to the power {right}")
        return super().call_binop(context, operator, left, right)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _GenerationTracker],
        loader=_NoTemplates(),
        undefined=_GuardedUndefined,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _plain(value: Any) -> Any:
    """Template inputs rebuilt from plain JSON types (as transformers does): a rich object in a
    message (a dataclass, bytes, an enum) could expose methods the sandbox does not know are
    dangerous, and templates only ever read JSON-shaped data."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # subclasses (str enums, numpy scalars) lose their extra methods
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"  # inert placeholder (image bytes and the like)


def _message(msg: Any) -> dict[str, Any]:
    """An Ollama message as transformers-style templates expect it, Ollama's names kept too:
    tool_calls get type "function" (arguments stay objects), reasoning is under thinking and
    reasoning_content (gpt-oss reads one, Qwen3/DeepSeek-R1 the other), tool_name is also name
    (tool results), content is never None."""
    m = _plain(msg)
    if not isinstance(m, dict):
        raise ChatTemplateError(f"chat messages must be objects, got {type(msg).__name__}")
    m["content"] = "" if m.get("content") is None else m["content"]
    calls = m.get("tool_calls")
    if calls:
        m["tool_calls"] = [{"type": "function", **c} for c in calls if isinstance(c, dict)]
    elif "tool_calls" in m:
        del m["tool_calls"]  # templates test `message.tool_calls is defined`, not truthiness
    reasoning = next((m[k] for k in ("thinking", "reasoning_content", "reasoning") if m.get(k)), None)
    if reasoning is not None:
        m["thinking"] = m["reasoning_content"] = reasoning
    if m.get("tool_name"):
        m.setdefault("name", m["tool_name"])
    for key in ("images", "thinking", "tool_name"):
        if key in m and not m[key]:
            del m[key]
    return m


def _is_go_template(source: str) -> bool:
    """Ollama's Modelfile TEMPLATE is Go text/template ({{ .Prompt }}, {{ range .Messages }})."""
    return "{{ ." in source or "{{- ." in source or "{{ range ." in source or "{{- range ." in source


@dataclass(frozen=True)
class TemplateSource:
    """A chat template's text and its bos/eos strings, not compiled: compiling folds constants,
    which runs template code ('a'*4000000000), so only the render process compiles."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], override: str | None = None) -> "TemplateSource":
        """The GGUF's template (or `override`), with its bos/eos strings from the vocabulary."""
        tokens = metadata.get("tokenizer.ggml.tokens") or []

        def text(key: str) -> str:
            i = metadata.get(key)
            return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

        source = override
        if source and _is_go_template(source):
            log.warning("ignoring a Go-syntax (Ollama Modelfile) template; using the GGUF's Jinja template")
            source = None
        source = source or metadata.get("tokenizer.chat_template")
        if source is not None and not isinstance(source, str):
            log.warning("ignoring a chat template of type %s; using the default one", type(source).__name__)
            source = None
        source = source or default_template(tokens)
        return cls(source, text("tokenizer.ggml.bos_token_id"), text("tokenizer.ggml.eos_token_id"))


class ChatTemplate:
    """render(messages, tools=, think=, add_generation_prompt=) -> the prompt text."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", extra: dict[str, Any] | None = None):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.extra = dict(extra or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateSyntaxError(f"chat template syntax error at line {e.lineno}: {e.message}") from None

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], override: str | None = None) -> "ChatTemplate":
        """The GGUF's template (or `override`), with its bos/eos strings from the vocabulary."""
        spec = TemplateSource.from_metadata(metadata, override)
        return cls(spec.source, bos_token=spec.bos_token, eos_token=spec.eos_token)

    @property
    def supports_thinking(self) -> bool:
        return "enable_thinking" in self.source or "<think>" in self.source or "reasoning_content" in self.source

    def render(self, messages: Iterable[Any], *, tools: list[dict[str, Any]] | None = None,
               think: bool | str | None = None, add_generation_prompt: bool = True,
               max_chars: int | None = None, **kwargs: Any) -> str:  # fmt: skip
        """The prompt; with max_chars, rendering stops with TemplateLimitError once the output
        passes it (the pieces are counted as the template yields them, before they are joined)."""
        context: dict[str, Any] = {
            **self.extra,
            "messages": [_message(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            # Defined even when empty, as transformers passes them: templates test `tools is none`.
            "tools": _plain(list(tools)) if tools else None,
            "documents": None,
            **_plain(kwargs),
        }
        if isinstance(think, bool):
            context["enable_thinking"] = think  # Qwen3's switch; templates without it ignore it
        elif isinstance(think, str):
            context["reasoning_effort"] = think  # gpt-oss style levels: "low", "medium", "high"
            context["enable_thinking"] = True
        try:
            if max_chars is None:
                return self._template.render(**context)
            return _joined(self._template.generate(**context), max_chars)
        except (ChatTemplateError, SecurityError):
            raise
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


def _joined(pieces: Iterable[str], max_chars: int) -> str:
    out, total = [], 0
    for piece in pieces:
        total += len(piece)
        if total > max_chars:
            raise TemplateLimitError(f"chat template output exceeds {max_chars} characters")
        out.append(piece)
    return "".join(out)


def default_template(tokens: list[str]) -> str:
    vocab = set(tokens)
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        return GEMMA_TEMPLATE
    return CHATML_TEMPLATE
