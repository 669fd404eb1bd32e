"""An offloaded block's MoE step: routed experts on the CPU while the accelerator does the rest.

Per step and layer: the routed tokens' hidden states, routing weights and expert ids go to
host memory; the fused CPU kernel starts on a worker thread (it releases the GIL, so Python
goes on launching device work); the shared experts run on the accelerator meanwhile; then the
CPU result comes back and is added. On DeepSeek-V2-Lite a token's routed experts read 6 of 64
experts x 3 x 2048 x 1408 weights (~30 MB at Q4_K) against ~5 MB for its shared experts, so the
shared part hides entirely under the CPU's.

Same bits as the CPU path: the fused kernel adds every routed expert in ascending order into
zeros and the shared experts last, with weight 1 (an exact multiply). The routed-only call
gives the same partial sums, and the shared experts run alone (as the one expert every token
visits with weight 1: 0 + 1 * y = y), so their sum is the fused kernel's, bit for bit.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

from .. import kernels
from .accelerator import Accelerator

if TYPE_CHECKING:
    from ..layers.linear import FeedForward
    from ..layers.moe import Experts


class HybridExperts:
    """Runs the routed experts of every offloaded block of one model; owns the CPU worker."""

    def __init__(self, accel: Accelerator):
        self.accel = accel
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-experts")
        self.trace: list[str] | None = None  # tests set a list to see the order of the steps

    def __call__(self, experts: Experts, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                 shared: FeedForward | None = None) -> torch.Tensor:  # fmt: skip
        """x [T, D], weights/ids [T, A] on the accelerator -> [T, D] there."""
        host = self.accel.to_host
        pending = self.submit(experts, host(x), host(weights), host(ids))
        shared_out = None if shared is None else self._shared(experts, shared, x)
        routed = self.accel.to_device(self.wait(pending))
        return routed if shared_out is None else routed + shared_out

    def submit(self, experts: Experts, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> Future:
        self._note("submit routed")
        return self._worker.submit(experts.routed, x, weights, ids)

    def wait(self, pending: Future) -> torch.Tensor:
        out = pending.result()
        self._note("routed done")
        return out

    def _shared(self, experts: Experts, shared: FeedForward, x: torch.Tensor) -> torch.Tensor:
        self._note("shared start")
        fused = shared.quantized()
        if self.accel.is_standin and fused is not None and x.device.type == "cpu":
            # The fused kernel's own arithmetic for the shared experts, as the CPU path has it.
            T = x.shape[0]
            ones, zeros = torch.ones(T, 1), torch.zeros(T, 1, dtype=torch.int32)
            out = kernels.moe_experts(x.float(), zeros, ones, *fused, 1, experts.activations).to(x.dtype)
        else:
            out = shared(x)
        self._note("shared done")
        return out

    def _note(self, event: str) -> None:
        if self.trace is not None:
            self.trace.append(event)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
