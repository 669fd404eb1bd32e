"""GGUF weights in their blocks under the Triton kernels: dequantization bit-exact against gguf-py,
GEMV and GEMM against float64. Without CUDA they run in Triton's interpreter on CPU tensors."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as GT

from backend import kernels
from backend.hybrid import gpu_weights as gw
from backend.testmodels.common import QUANTIZABLE, random_blocks

if not torch.cuda.is_available():
    # Read when triton is first imported (its own jit helpers, tl.sum among them, are decorated
    # then) and when gpu_weights imports the kernels at its first call: none of the imports
    # above imports triton, so this line comes first whatever was collected before.
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_TYPES = ["Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F32", "F16", "BF16"]
LOAD_TYPES = ["Q4_1", "Q5_1", "Q2_K", "Q3_K", "IQ4_XS", "IQ2_XXS"]  # dequantized to bf16 at load
FP16_FIELDS = {"Q4_0": (0,), "Q5_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
# Unit roundoff of one rounding to each dtype; float32 tiles are tf32 in tl.dot on CUDA.
UNIT = {torch.float32: 2.0**-11 if DEVICE.type == "cuda" else 2.0**-24, torch.float16: 2.0**-11,
        torch.bfloat16: 2.0**-8}  # fmt: skip


def shapes(name: str) -> list[tuple[int, int]]:
    """(N, K): N never a multiple of a row block; K not a multiple of a K step where the type allows."""
    block = GGML_QUANT_SIZES[GT[name]][0]
    return [(40, 2 * block), (19, 256)] if block == 256 else [(40, 5 * block if block == 32 else 100), (19, 512)]


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def raw_weight(name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """[rows, row_bytes] uint8: gguf-py's quantization of random weights where it has one, else
    random blocks with fp16 scales calibrated to unit RMS (backend.testmodels)."""
    if name in QUANTIZABLE or name in ("F32", "F16"):
        values = rng.standard_normal((rows, cols)).astype(np.float32)
        return np.ascontiguousarray(quants.quantize(values, GT[name])).view(np.uint8).reshape(rows, -1)
    return random_blocks((rows, cols), name, 1.0, rng)


def wild_weight(name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes with random finite fp16 scales (subnormals too): every bit of the layout."""
    block, type_size = GGML_QUANT_SIZES[GT[name]]
    raw = rng.integers(0, 256, size=(rows * cols // block, type_size), dtype=np.uint8)
    for at in FP16_FIELDS[name]:
        halves = rng.integers(0, 1 << 16, size=len(raw), dtype=np.uint32).astype(np.uint16)
        halves = np.where((halves & 0x7C00) == 0x7C00, halves & 0xBFFF, halves)  # no inf/NaN
        raw[:, at : at + 2] = halves.astype(np.uint16).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, -1)


def upload(name: str, raw: np.ndarray, cols: int, device: torch.device = DEVICE) -> gw.GpuWeight:
    return gw.GpuWeight.upload(kernels.QuantWeight(raw.reshape(-1), GT[name], (raw.shape[0], cols)), device)


def reference(name: str, raw: np.ndarray, cols: int) -> np.ndarray:
    return quants.dequantize(raw, GT[name]).reshape(raw.shape[0], cols)


def assert_close(y: torch.Tensor, x: torch.Tensor, w_ref: np.ndarray, unit_x: float, unit_w: float) -> None:
    """|y - x @ W.T| <= (u_x + u_w + u_x u_w + K 2^-24) (|x| @ |W|.T), elementwise: operands
    rounded once each to the tile dtype, float32 accumulation over K terms."""
    x64, w64 = x.double().cpu().numpy(), w_ref.astype(np.float64)
    err = np.abs(y.double().cpu().numpy() - x64 @ w64.T)
    tol = unit_x + unit_w + unit_x * unit_w + x.shape[1] * 2.0**-24
    bound = tol * (np.abs(x64) @ np.abs(w64).T)
    assert (err <= bound).all(), f"max error / bound {(err / np.maximum(bound, 1e-300)).max():.3g}"


@pytest.mark.parametrize("name,wild", [(n, False) for n in KERNEL_TYPES] + [(n, True) for n in FP16_FIELDS])
def test_dequantize_is_bit_identical_to_gguf(name, wild):
    rows, cols = shapes(name)[0]
    raw = (wild_weight if wild else raw_weight)(name, rows, cols, rng_for(name, wild))
    w = upload(name, raw, cols)
    ours = gw.dequantize(w).cpu().numpy()
    np.testing.assert_array_equal(ours.view(np.uint32), reference(name, raw, cols).view(np.uint32))


@pytest.mark.parametrize("name", ["Q6_K", "Q5_0", "BF16"])
def test_dequantize_rows_is_an_embedding_lookup(name):
    rows, cols = shapes(name)[0]
    raw = raw_weight(name, rows, cols, rng_for(name))
    index = torch.tensor([5, 0, rows - 1, 5])
    ours = gw.dequantize(upload(name, raw, cols), index).cpu().numpy()
    np.testing.assert_array_equal(ours, reference(name, raw, cols)[index.numpy()])


@pytest.mark.parametrize("T", [1, 3, 17])
@pytest.mark.parametrize("shape_index", [0, 1])
@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_gemv_matches_float64(name, shape_index, T):
    rows, cols = shapes(name)[shape_index]
    raw = raw_weight(name, rows, cols, rng_for(name, shape_index))
    x = torch.from_numpy(rng_for(T).standard_normal((T, cols)).astype(np.float32)).to(DEVICE)
    assert_close(gw.gemv(x, upload(name, raw, cols)), x, reference(name, raw, cols), 0.0, 0.0)


@pytest.mark.parametrize("T", [3, 17, 64])
@pytest.mark.parametrize("shape_index", [0, 1])
@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_gemm_matches_float64(name, shape_index, T):
    rows, cols = shapes(name)[shape_index]
    raw = raw_weight(name, rows, cols, rng_for(name, shape_index))
    x = torch.from_numpy(rng_for(T).standard_normal((T, cols)).astype(np.float32)).to(DEVICE)
    unit = UNIT[gw.default_tile_dtype(DEVICE)]
    assert_close(gw.gemm(x, upload(name, raw, cols)), x, reference(name, raw, cols), unit, unit)


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "Q8_0", "BF16"])
def test_gemm_with_half_tiles(name):
    rows, cols = shapes(name)[0]
    raw = raw_weight(name, rows, cols, rng_for(name))
    x = torch.from_numpy(rng_for(name, 17).standard_normal((17, cols)).astype(np.float32)).to(DEVICE)
    y = gw.gemm(x, upload(name, raw, cols), tile_dtype=torch.float16)
    assert_close(y, x, reference(name, raw, cols), UNIT[torch.float16], UNIT[torch.float16])


@pytest.mark.parametrize("T", [0, 1, gw.GEMV_MAX_TOKENS, gw.GEMV_MAX_TOKENS + 1, 64])
def test_gpu_linear_picks_gemv_for_few_tokens(T):
    raw = raw_weight("Q4_K", 19, 256, rng_for(T))
    w = upload("Q4_K", raw, 256)
    x = torch.randn(T, 256).to(DEVICE)
    path = gw.gemv if T <= gw.GEMV_MAX_TOKENS else gw.gemm
    y = gw.gpu_linear(x, w)
    assert y.shape == (T, 19) and y.dtype == torch.float32
    assert torch.equal(y, path(x, w))


@pytest.mark.parametrize("name", LOAD_TYPES)
def test_other_types_are_bf16_at_load(name):
    rows, cols = 19, 256
    raw = raw_weight(name, rows, cols, rng_for(name))
    w = upload(name, raw, cols)
    ref = reference(name, raw, cols)
    assert w.ggml_type == GT.BF16 and w.data.dtype == torch.bfloat16 and w.nbytes == rows * cols * 2
    assert torch.equal(w.data.cpu(), torch.from_numpy(ref).to(torch.bfloat16))
    x = torch.from_numpy(rng_for(name, 3).standard_normal((3, cols)).astype(np.float32)).to(DEVICE)
    assert_close(gw.gpu_linear(x, w), x, ref, 0.0, UNIT[torch.bfloat16])


@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_weights_take_their_file_bytes(name):
    rows, cols = shapes(name)[1]
    raw = raw_weight(name, rows, cols, rng_for(name))
    w = upload(name, raw, cols)
    assert w.nbytes == raw.nbytes and w.shape == (rows, cols) and w.device.type == DEVICE.type
    assert w.is_quantized == (name not in ("F32", "F16", "BF16"))


def test_upload_in_chunks(monkeypatch):
    raw = raw_weight("Q6_K", 19, 512, rng_for("chunks"))
    monkeypatch.setattr(gw, "UPLOAD_CHUNK_BYTES", 3 * raw.shape[1])  # 7 chunks, the last one short
    w = upload("Q6_K", raw, 512)
    assert np.array_equal(w.data.cpu().numpy(), raw)
    bf16 = upload("Q2_K", raw_weight("Q2_K", 19, 512, rng_for("chunks")), 512)
    assert torch.equal(bf16.data.cpu(), upload("Q2_K", raw_weight("Q2_K", 19, 512, rng_for("chunks")), 512).data.cpu())


def test_from_dense_keeps_the_dtype():
    t = torch.randn(24, 70)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = gw.GpuWeight.from_dense(t.to(dtype), DEVICE)
        assert w.data.dtype == dtype and w.nbytes == t.numel() * t.to(dtype).element_size()
        x = torch.randn(2, 70).to(DEVICE)
        assert_close(gw.gpu_linear(x, w), x, t.to(dtype).float().numpy(), 0.0, 0.0)
    with pytest.raises(gw.GpuWeightError, match="2-D"):
        gw.GpuWeight.from_dense(torch.randn(4), DEVICE)


def test_bad_activations_are_refused():
    w = upload("Q8_0", raw_weight("Q8_0", 4, 64, rng_for("bad")), 64)
    for x in (torch.randn(2, 32), torch.randn(2, 64, dtype=torch.float64), torch.randn(64)):
        with pytest.raises(gw.GpuWeightError, match=r"float32 \[T, 64\]"):
            gw.gpu_linear(x.to(DEVICE), w)


def test_cpu_tensors_without_the_interpreter_are_refused():
    code = (
        "import torch; from backend.hybrid import gpu_weights as gw\n"
        "w = gw.GpuWeight.from_dense(torch.ones(2, 32), torch.device('cpu'))\n"
        "try: gw.gpu_linear(torch.ones(1, 32), w)\n"
        "except gw.GpuWeightError as e: print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "set TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


# ---- on CUDA: model-sized weights with bf16 tiles, and timings -------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# DeepSeek-V2-Lite's GPU-side projections (hidden 2048): q_proj, shared experts' gate/up and down.
MODEL_SHAPES = [(3072, 2048), (2816, 2048), (2048, 2816)]


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_cuda_model_sizes_with_bf16_tiles(name):
    rows, cols = MODEL_SHAPES[1][0] + 8, MODEL_SHAPES[1][1]  # rows: not a multiple of any row block
    raw = raw_weight(name, rows, cols, rng_for(name, "cuda"))
    w = upload(name, raw, cols, torch.device("cuda"))
    ref = reference(name, raw, cols)
    np.testing.assert_array_equal(gw.dequantize(w).cpu().numpy().view(np.uint32), ref.view(np.uint32))
    for T in (1, 4, gw.GEMV_MAX_TOKENS + 1, 512):
        x = torch.from_numpy(rng_for(name, T).standard_normal((T, cols)).astype(np.float32)).cuda()
        y = gw.gpu_linear(x, w, tile_dtype=torch.bfloat16)
        unit = 0.0 if T <= gw.GEMV_MAX_TOKENS else UNIT[torch.bfloat16]
        assert_close(y, x, ref, unit, unit)


@pytest.mark.gpu
@cuda_only
def test_cuda_timings(capsys):
    """GEMV (T = 1, 8) as weight GB/s and GEMM (T = 512) as TFLOP/s, beside cuBLAS on the same
    weight dequantized to bf16 (what the blocks save: Q4_K is 0.5625 bytes a weight, bf16 2)."""
    from triton.testing import do_bench

    lines = [f"{torch.cuda.get_device_name()}: us (GB/s of weight bytes | TFLOP/s)"]
    for rows, cols in MODEL_SHAPES:
        for name in ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "BF16"]:
            raw = raw_weight(name, rows, cols, rng_for(name, rows, cols))
            w = upload(name, raw, cols, torch.device("cuda"))
            dense = torch.from_numpy(reference(name, raw, cols)).to("cuda", torch.bfloat16)
            cells = []
            for T in (1, 8, 512):
                x = torch.randn(T, cols, device="cuda")
                ms = do_bench(lambda x=x, w=w: gw.gpu_linear(x, w))
                rate = f"{w.nbytes / ms / 1e6:.0f} GB/s" if T <= 8 else f"{2 * T * rows * cols / ms / 1e9:.0f} TF"
                xb = x.to(torch.bfloat16)
                ms_ref = do_bench(lambda xb=xb, dense=dense: torch.nn.functional.linear(xb, dense))
                cells.append(f"T={T} {ms * 1e3:6.1f} ({rate}) cuBLAS bf16 {ms_ref * 1e3:6.1f}")
            lines.append(f"{name:5} [{rows}, {cols}]  " + " | ".join(cells))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
