"""bench/synth_gguf.py's random weights, through gguf-py's dequantizer: centred, so the
synthetic models route tokens to different experts as real ones do (with a common mean in every
row, every token of the synthetic V2-Lite chose the same 6 experts in every layer)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

SPEC = importlib.util.spec_from_file_location("synth_gguf", Path(__file__).parents[2] / "bench" / "synth_gguf.py")
synth = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = synth  # its dataclasses look their module up
SPEC.loader.exec_module(synth)


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
                                   Q.IQ1_S, Q.IQ2_XXS])  # fmt: skip
def test_random_weights_have_no_common_mean(qtype):
    rows, cols = 256, 2048
    raw = synth._data((rows, cols), qtype, np.random.default_rng(0))
    w = quants.dequantize(raw, qtype).reshape(rows, cols).astype(np.float64)
    assert np.isfinite(w).all() and w.std() > 0
    # The mean over all weights, against what 256 x 2048 independent zero-mean draws would show.
    assert abs(w.mean()) < 4 * w.std() / np.sqrt(w.size) + 0.02 * w.std()
    # Row sums (what a constant input direction sees) are spread around zero, not all one sign.
    sums = w.sum(axis=1)
    assert 0.3 < (sums > 0).mean() < 0.7
