"""Which parts of a model live on the accelerator: a typed plan, then its application.

As in llama.cpp, `num_gpu` counts layers from the top of the stack (the first layers stay on
the CPU), and one more than the number of blocks also takes the final norm and LM head. An
offloaded block keeps everything small and dense on the accelerator (attention with its cache,
norms, router, shared experts, a dense FFN); its routed experts stay on the CPU, in the fused
kernel, whatever the plan: they are ~96 % of DeepSeek-V3's bytes and ~4 % of its work per token.
Token embeddings are looked up on the CPU (a few rows a step) and copied over, as llama.cpp does.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..layers.linear import Linear
from ..layers.moe import Experts
from .accelerator import Accelerator
from .gpu_weights import DENSE_DTYPES, QUANT_TYPES
from .hybrid_moe import HybridExperts

# Types the GPU multiplies straight from their GGUF blocks (gpu_weights' kernels); the rest are
# dequantized to bf16 when uploaded (2 bytes a weight), which the plan has to pay for.
GPU_BLOCK_TYPES = frozenset(QUANT_TYPES) | frozenset(DENSE_DTYPES.values())

# Headroom for what a step allocates besides weights and caches (activations, attention
# scores, the CUDA context's own pools): 5 % of the device plus 512 MiB.
RESERVE_FRACTION, RESERVE_BYTES = 0.05, 512 * 2**20


@dataclass(frozen=True)
class LayerCost:
    weights: int  # bytes an offloaded block puts on the accelerator (routed experts excluded)
    cache_per_token: int  # bytes of its attention cache per token of one sequence


@dataclass(frozen=True)
class Placement:
    num_layers: int
    gpu_layers: tuple[int, ...]  # ascending: the top of the stack
    head_on_gpu: bool  # final norm and LM head
    weights_bytes: int  # on the accelerator
    cache_bytes_per_token: int  # of one sequence, over the offloaded blocks

    def on_gpu(self, layer: int) -> bool:
        return layer in self.gpu_layers

    @property
    def any_on_gpu(self) -> bool:
        return bool(self.gpu_layers) or self.head_on_gpu


def linear_bytes(lin: Linear) -> int:
    """What `lin` occupies on the accelerator."""
    if lin.qweight is None:
        return lin.weight.numel() * lin.weight.element_size() + _buffer_bytes(lin, ("bias",))
    q = lin.qweight
    native = q.ggml_type in GPU_BLOCK_TYPES
    weights = q.raw.nbytes if native else 2 * q.shape[0] * q.shape[1]
    return weights + _buffer_bytes(lin, ("bias",))


def module_bytes(module: nn.Module) -> int:
    """Accelerator bytes of `module` placed whole, routed experts excluded (they stay on the CPU)."""
    if isinstance(module, Experts):
        return 0
    if isinstance(module, Linear):
        return linear_bytes(module)
    own = _buffer_bytes(module, tuple(module._buffers)) + sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return own + sum(module_bytes(child) for child in module.children())


def _buffer_bytes(module: nn.Module, names: tuple[str, ...]) -> int:
    return sum(b.numel() * b.element_size() for n in names if (b := module._buffers.get(n)) is not None)


def model_costs(model) -> tuple[list[LayerCost], int]:
    """Per block what offloading costs, and the bytes of the final norm plus LM head."""
    costs = [LayerCost(module_bytes(block), _cache_bytes(block.attn.allocate(1))) for block in model.layers]
    return costs, module_bytes(model.norm) + module_bytes(model.output)


def _cache_bytes(cache: tuple) -> int:
    # MLA's latent and rope parts are views of one buffer: count the storage once.
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache}
    return sum(storages.values())


def usable_memory(free_memory: int) -> int:
    """What weights and caches may take of `free_memory` bytes once the reserve is kept."""
    return free_memory - int(RESERVE_FRACTION * free_memory) - RESERVE_BYTES


def plan(costs: list[LayerCost], head_bytes: int, free_memory: int, num_gpu: int, cache_tokens: int) -> Placement:
    """The placement for `num_gpu` (Ollama's option: -1 as many layers as fit, 0 none, n the top
    n blocks, n > blocks also the LM head), within `free_memory` bytes of the accelerator once the
    caches of `cache_tokens` tokens (num_ctx x parallel sequences) for the offloaded blocks and the
    reserve are paid. An explicit num_gpu that does not fit is lowered, as Ollama does."""
    L = len(costs)
    budget = usable_memory(free_memory)
    wanted = L + 1 if num_gpu < 0 else min(num_gpu, L + 1)

    def need(n: int) -> int:
        top = costs[L - min(n, L) :]
        return sum(c.weights + c.cache_per_token * cache_tokens for c in top) + (head_bytes if n > L else 0)

    n = wanted
    while n > 0 and need(n) > budget:
        n -= 1
    top = costs[L - min(n, L) :]
    return Placement(
        num_layers=L,
        gpu_layers=tuple(range(L - min(n, L), L)),
        head_on_gpu=n > L,
        weights_bytes=sum(c.weights for c in top) + (head_bytes if n > L else 0),
        cache_bytes_per_token=sum(c.cache_per_token for c in top),
    )


def apply(model, placement: Placement, accel: Accelerator) -> HybridExperts | None:
    """Moves the planned parts of `model` to `accel` and routes the offloaded blocks' experts
    through a HybridExperts (returned, to be closed with the model); None if nothing moved."""
    model.placement, model.accelerator = placement, accel
    if not placement.any_on_gpu:
        return None
    hybrid = HybridExperts(accel)
    for i in placement.gpu_layers:
        _place(model.layers[i], accel, hybrid)
    if placement.head_on_gpu:
        _place(model.norm, accel, hybrid)
        _place(model.output, accel, hybrid)
    return hybrid


def _place(module: nn.Module, accel: Accelerator, hybrid: HybridExperts) -> None:
    if isinstance(module, Experts):
        module.hybrid = hybrid  # the weights stay in the CPU's map
        return
    for child in module.children():
        _place(child, accel, hybrid)
    for name, buf in module._buffers.items():
        if buf is not None:
            module._buffers[name] = accel.to_device(buf)
    if isinstance(module, Linear):
        module.place(accel)


def place_model(model, accel: Accelerator, num_gpu: int, cache_tokens: int) -> tuple[Placement, HybridExperts | None]:
    """Plans for the accelerator's free memory now and applies the plan."""
    costs, head = model_costs(model)
    placement = plan(costs, head, accel.free_memory(), num_gpu, cache_tokens)
    return placement, apply(model, placement, accel)
