"""The upstreams file: what it accepts, and the errors that name what to fix."""

from __future__ import annotations

import pytest

from ollama_compat.settings import Settings
from ollama_compat.upstream.config import Replica, UpstreamsConfigError, load, parse

EXAMPLE = """
read_timeout = 900
health_interval = 5

[models."deepseek-r1:671b"]
model = "deepseek-ai/DeepSeek-R1"
capabilities = ["completion", "tools", "thinking"]
context_length = 131072
upstreams = [
  { url = "http://10.0.0.1:30000/v1", api_key_env = "SGLANG_KEY" },
  { url = "http://10.0.0.2:30000", api_key = "inline" },
]

[models.Qwen3]
upstreams = "http://127.0.0.1:8000/"
"""


def test_the_example_file(tmp_path):
    path = tmp_path / "upstreams.toml"
    path.write_text(EXAMPLE)
    config = load(path, env={"SGLANG_KEY": "secret"})
    r1, qwen = config.models
    assert r1.name == "deepseek-r1:671b" and r1.model == "deepseek-ai/DeepSeek-R1" and r1.context_length == 131072
    assert r1.replicas == (Replica("http://10.0.0.1:30000/v1", "secret"), Replica("http://10.0.0.2:30000/v1", "inline"))
    assert qwen.name == "qwen3:latest" and qwen.model == "Qwen3" and qwen.capabilities == ("completion", "tools")
    assert qwen.replicas == (Replica("http://127.0.0.1:8000/v1"),)
    assert (config.read_timeout, config.health_interval, config.connect_timeout) == (900.0, 5.0, 5.0)
    assert config.modified_at == path.stat().st_mtime and len({r1.digest, qwen.digest}) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models.x]\nupstreams = []\n', 'models."x": upstreams must list at least one URL'),
        ('[models.x]\nupstreams = ["ftp://h"]\n', "url must be http(s)"),
        ('[models.x]\nupstreams = [{ url = "http://h", api_key_env = "NOPE" }]\n', "$NOPE is not set"),
        ('[models.x]\nupstreams = ["http://h"]\ncapabilities = ["flying"]\n', "capabilities must be a subset"),
        ('[models."../x"]\nupstreams = ["http://h"]\n', "not a valid model name"),
        ('[models.x]\nupstream = ["http://h"]\n', "unknown keys ['upstream']"),
        ('[models.X]\nupstreams = ["http://h"]\n[models."x:latest"]\nupstreams = ["http://h"]\n', "named twice"),
        ('read_timeout = 0\n', "read_timeout must be a positive number"),
        ('[models.x\n', "upstreams"),  # TOML's own error, with the file's name
    ],
)
def test_errors_name_the_entry(text, message):
    with pytest.raises(UpstreamsConfigError) as e:
        parse(text, env={})
    assert message in str(e.value)


def test_missing_file_and_the_setting(tmp_path):
    with pytest.raises(UpstreamsConfigError, match="cannot read upstreams file"):
        load(tmp_path / "none.toml")
    assert Settings.from_env({"OLLAMA_UPSTREAMS": " /etc/u.toml "}).upstreams == "/etc/u.toml"
    assert Settings.from_env({}).upstreams == ""
