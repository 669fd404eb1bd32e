"""Architecture registry: general.architecture -> Model class, and load_model()."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from ..gguf_model import GGUFError, GGUFFile
from ..layers.linear import DEFAULT_ACTIVATIONS, set_activations

# general.architecture -> module in this package defining `Model`. Modules load on first use so one
# architecture's import cost (or a teammate's work in progress) never affects another.
_MODULES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen2moe": "qwen_moe",
    "qwen3moe": "qwen_moe",
    "deepseek2": "deepseek2",
    "gemma3": "gemma3",
}


class _Architectures(Mapping):
    """general.architecture -> Model class, importing the model file on first access."""

    def __getitem__(self, architecture: str) -> type:
        return importlib.import_module(f"{__name__}.{_MODULES[architecture]}").Model

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


ARCHITECTURES: Mapping[str, type] = _Architectures()


def load_model(f: GGUFFile, activations: str | None = None):
    """The Model for f's architecture, weights loaded from f. activations: "q8" (8-bit
    activations, integer kernels), "q8x2" (plus their 8-bit residual: near-exact) or "float"
    (exact; oracle tests); None: MOE_ACTIVATIONS."""
    if f.architecture not in _MODULES:
        raise GGUFError(f"{f.name}: unsupported architecture '{f.architecture}'")
    return set_activations(ARCHITECTURES[f.architecture].from_gguf(f), activations or DEFAULT_ACTIVATIONS)
