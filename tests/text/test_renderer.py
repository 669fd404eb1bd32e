"""The render process: the same prompts as rendering in place, and every runaway template stopped
within its limits while other renders go on (issue 20, item 4)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import pytest
from jinja2.sandbox import SecurityError

from backend.text.chat_template import (
    GEMMA_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    TemplateLimitError,
    TemplateSource,
    TemplateSyntaxError,
)
from backend.text.renderer import ChatTemplateRenderer

GOLDEN = Path(__file__).parent.parent / "data" / "golden"
CONVERSATIONS = json.loads((GOLDEN / "conversations.json").read_text(encoding="utf-8"))["conversations"]
HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def renderer():
    r = ChatTemplateRenderer()
    yield r
    r.close()


def test_renders_what_the_template_renders_in_place(renderer, smollm2_metadata):
    for source in (TemplateSource.from_metadata(smollm2_metadata), TemplateSource(GEMMA_TEMPLATE, "<bos>", "<eos>")):
        here = ChatTemplate(source.source, source.bos_token, source.eos_token)
        for conv in CONVERSATIONS:
            for add in (True, False):
                assert renderer.render(source, conv, add_generation_prompt=add) == here.render(conv, add_generation_prompt=add)
    tools = TemplateSource("{{ tools | tojson }}{% if enable_thinking %}T{% endif %}{{ reasoning_effort }}")
    assert renderer.render(tools, HI, tools=TOOLS, think="high") == json.dumps(TOOLS) + "Thigh"
    # Text JSON cannot carry as it is: lone surrogates, NUL, non-BMP characters.
    odd = [{"role": "user", "content": "\ud800 \x00 \U0001f600 é"}]
    assert renderer.render(TemplateSource("{{ messages[0].content }}"), odd) == odd[0]["content"]


RUNAWAYS = {
    "output": ("{% for i in range(100000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}", "(output exceeds|time limit)"),  # whichever comes first
    "time": ("{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", r"time limit \(2 s\)"),
    "string": ("{{ 'a'*4000000000 }}", "builds a sequence of 4000000000 items"),
    "list": ("{{ (range(100000)|list) * 100000 }}", "builds a sequence of 10000000000 items"),
    "power": ("{{ 7 ** 99999999 }}", "raises to the power 99999999"),
    "filter": ("{{ 'a' | center(4000000000) }}", r"ran out of its memory \(512 MiB\)"),
    "doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
                 "{{ ns.s | length }}", "ran out of its memory"),  # fmt: skip
    "recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deep"),
}


@pytest.mark.parametrize("name", list(RUNAWAYS))
def test_a_runaway_template_is_stopped_within_its_limits(renderer, name):
    source, message = RUNAWAYS[name]
    start = time.perf_counter()
    with pytest.raises(TemplateLimitError, match=f"^chat template .*{message}"):
        renderer.render(TemplateSource(source), HI)
    assert time.perf_counter() - start < 2 + 2 + 1  # its time limit, the grace to answer, a fresh process
    assert renderer.render(TemplateSource("{{ messages[0].content }}!"), HI) == "hi!"


def test_other_renders_go_on_while_runaways_run(renderer):
    runaway = TemplateSource(RUNAWAYS["time"][0])
    plain = TemplateSource("{{ messages[0].content }}")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stuck = [pool.submit(renderer.render, runaway, HI) for _ in range(2)]
        time.sleep(0.3)  # both runaways hold a worker
        start = time.perf_counter()
        assert [pool.submit(renderer.render, plain, HI).result() for _ in range(20)] == ["hi"] * 20
        assert time.perf_counter() - start < 1.5  # the two free workers serve them
        for future in stuck:
            with pytest.raises(TemplateLimitError):
                future.result()


def test_template_errors_keep_their_kind(renderer):
    with pytest.raises(ChatTemplateError, match="rejected the messages: roles must alternate") as caught:
        renderer.render(TemplateSource("{{ raise_exception('roles must alternate') }}"), HI)
    assert not isinstance(caught.value, TemplateLimitError)
    with pytest.raises(SecurityError):
        renderer.render(TemplateSource("{{ ''.__class__.__mro__[1].__subclasses__() }}"), HI)
    with pytest.raises(TemplateSyntaxError, match="syntax error at line 1"):
        renderer.render(TemplateSource("{% for %}"), HI)


def test_a_killed_worker_is_replaced_and_close_ends_every_process():
    r = ChatTemplateRenderer(max_workers=2)
    assert r.render(TemplateSource("{{ 1 + 1 }}"), HI) == "2"
    (worker,) = r._idle
    worker.proc.kill()
    assert r.render(TemplateSource("{{ 2 + 2 }}"), HI) == "4"  # a fresh process
    procs = [w.proc for w in r._idle]
    r.close()
    assert all(p.poll() is not None for p in [worker.proc, *procs])
    with pytest.raises(ChatTemplateError, match="closed"):
        r.render(TemplateSource("x"), HI)
