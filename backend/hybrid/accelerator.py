"""The device beside the CPU that runs attention and dense layers: a CUDA GPU, or a stand-in.

The stand-in is the CPU playing a second device (MOE_ACCELERATOR=standin): every tensor that
would cross PCIe is copied, the routed experts run asynchronously as they do beside a GPU, and
the "device" side runs the very kernels of the CPU path, so a hybrid run gives the CPU path's
bits. That lets CI, which has no GPU, test placement, copies and the ordering of the overlap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MODES = ("auto", "cuda", "standin", "none")
_STANDIN_MEMORY = 16 * 2**30  # what the stand-in claims to hold unless MOE_STANDIN_VRAM says


class AcceleratorError(RuntimeError):
    pass


@dataclass(frozen=True)
class Accelerator:
    kind: str  # "cuda" or "standin"
    device: torch.device
    name: str
    total_memory: int  # bytes

    @property
    def is_standin(self) -> bool:
        return self.kind == "standin"

    def free_memory(self) -> int:
        if self.is_standin:
            return self.total_memory
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor's copy on the device (the stand-in copies too: nothing may alias)."""
        if self.is_standin:
            return t.clone()
        return t.to(self.device, non_blocking=t.is_pinned())

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        """A device tensor's copy in host memory; waits for the work that produces it."""
        if self.is_standin:
            return t.clone()
        return t.to("cpu")

    def synchronize(self) -> None:
        if not self.is_standin:
            torch.cuda.synchronize(self.device)


def find_accelerator(mode: str | None = None, main_gpu: int = 0) -> Accelerator | None:
    """The accelerator `mode` asks for (MOE_ACCELERATOR when None): "auto" takes CUDA when
    torch sees it and runs on the CPU alone otherwise; "cuda" insists; "standin" is the CPU
    playing a device of MOE_STANDIN_VRAM bytes (16 GiB by default); "none" is CPU only."""
    mode = (mode or os.environ.get("MOE_ACCELERATOR") or "auto").lower()
    if mode not in MODES:
        raise AcceleratorError(f"MOE_ACCELERATOR must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none":
        return None
    if mode == "standin":
        memory = int(os.environ.get("MOE_STANDIN_VRAM", _STANDIN_MEMORY))
        return Accelerator("standin", torch.device("cpu"), "stand-in (CPU)", memory)
    if not torch.cuda.is_available():
        if mode == "cuda":
            raise AcceleratorError("MOE_ACCELERATOR=cuda, but torch sees no CUDA device")
        return None
    count = torch.cuda.device_count()
    if not 0 <= main_gpu < count:
        raise AcceleratorError(f"main_gpu {main_gpu} does not exist: torch sees {count} CUDA device(s)")
    props = torch.cuda.get_device_properties(main_gpu)
    return Accelerator("cuda", torch.device("cuda", main_gpu), props.name, int(props.total_memory))
