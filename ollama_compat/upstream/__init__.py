"""Models served by OpenAI-compatible servers (vLLM, SGLang, llama.cpp, another ollama-compat),
behind the same engine interface as local ones."""

from .config import UpstreamsConfig, UpstreamsConfigError, load
from .engine import UpstreamEngine, UpstreamUnavailable
from .router import RouterEngine

__all__ = ["RouterEngine", "UpstreamEngine", "UpstreamUnavailable", "UpstreamsConfig", "UpstreamsConfigError", "load"]
