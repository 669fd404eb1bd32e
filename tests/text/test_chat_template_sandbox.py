"""Hostile chat templates (GGUFs are untrusted input) raise SecurityError and neither read files nor run code."""

from __future__ import annotations

import pytest
from jinja2.sandbox import SecurityError

from backend.text.chat_template import ChatTemplate

MESSAGES = [{"role": "user", "content": "hi"}]


def hostile_templates(secret: str, marker: str) -> dict[str, str]:
    run = f"touch {marker}"
    return {
        "mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "function_globals": f"{{{{ raise_exception.__globals__['os'].system('{run}') }}}}",
        "builtin_globals": f"{{{{ cycler.__init__.__globals__.os.popen('{run}').read() }}}}",
        "lipsum_globals": f"{{{{ lipsum.__globals__['os'].popen('{run}').read() }}}}",
        "strftime_globals": f"{{{{ strftime_now.__globals__.__builtins__.open('{secret}').read() }}}}",
        "messages_walk": "{{ messages.__class__.__base__.__subclasses__() }}",
        "attr_filter": "{{ ''|attr('__class__')|attr('__mro__') }}",
        "format_walk": "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}",
        "open_call": f"{{{{ open('{secret}').read() }}}}",
        "dunder_import": f"{{{{ __import__('os').system('{run}') }}}}",
        "import_tag": "{% import 'os' as os %}{{ os.system('" + run + "') }}",
        "include_file": "{% include '" + secret + "' %}",
        "from_import": "{% from '" + secret + "' import x %}{{ x }}",
        "mutate_list": "{% set x = messages %}{{ x.append({'role': 'system'}) }}",
        "mutate_dict": "{{ messages[0].update({'role': 'system'}) }}",
    }


@pytest.mark.parametrize("name", list(hostile_templates("S", "M")))
def test_hostile_template_raises_security_error_and_has_no_effect(name, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    marker = tmp_path / "pwned"
    source = hostile_templates(str(secret), str(marker))[name]
    messages = [dict(m) for m in MESSAGES]
    with pytest.raises(SecurityError) as info:
        ChatTemplate(source).render(messages)
    assert "TOP-SECRET-CONTENT" not in str(info.value)
    assert not marker.exists()
    assert messages == MESSAGES  # the caller's data is untouched


def test_sandbox_still_renders_ordinary_templates():
    src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.role|upper }}:{{ m['content'] }}{% endfor %}{{ ns.n }}{{ undefined_var }}"
    assert ChatTemplate(src).render(MESSAGES) == "USER:hi1"


class _Gadget:
    """A rich object a caller might leave in a message; its method has a side effect."""

    def __init__(self, marker):
        self.marker = marker

    def run(self):
        self.marker.write_text("ran")
        return "ran"


def test_rich_objects_in_messages_reach_the_template_as_inert_data(tmp_path):
    import enum

    class Role(str, enum.Enum):
        USER = "user"

    marker = tmp_path / "ran"
    messages = [{"role": Role.USER, "content": "hi", "images": [b"\x89PNG", _Gadget(marker)]}]
    assert ChatTemplate("{{ messages[0].role }}|{{ messages[0].images|length }}").render(messages) == "user|2"
    with pytest.raises(SecurityError):
        ChatTemplate("{{ messages[0].images[1].run() }}").render(messages)
    with pytest.raises(SecurityError):
        ChatTemplate("{{ messages[0].role.__class__ }}").render(messages)
    assert not marker.exists()
