"""The tiny-model writer: every quant type, llama.cpp's F32 conventions, a valid tokenizer, speed, CLI."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import tokenizers
from gguf import GGMLQuantizationType, quants

from backend.gguf_model import open_gguf
from backend.testmodels import FAMILIES, SUPPORTED_QTYPES, write_model
from backend.testmodels.common import bpe_vocab

MY_ARCHS = ["llama", "mixtral", "qwen2", "qwen2moe", "qwen3moe"]


@pytest.mark.parametrize("qtype", sorted(SUPPORTED_QTYPES))
def test_every_qtype_writes_finite_weights_of_sane_size(tmp_path, qtype):
    start = time.perf_counter()
    path = write_model("qwen2moe", tmp_path / "m.gguf", qtype=qtype)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"writing took {elapsed:.2f}s"
    f = open_gguf(path)
    assert f.get("general.file_type") >= 0
    for info in f.tensors.values():
        values = quants.dequantize(np.asarray(info.data), GGMLQuantizationType(info.ggml_type))
        assert np.isfinite(values).all(), info.name
        if len(info.shape) == 1 or "ffn_gate_inp" in info.name:
            assert info.type_name == "F32", f"{info.name} should stay F32 like llama.cpp's files"
            continue
        assert info.type_name == qtype, info.name
        # Random K/IQ blocks are calibrated to the float weights' RMS, 1/sqrt(fan_in) for matrices.
        want = 1.0 if info.name == "token_embd.weight" else info.shape[-1] ** -0.5
        rms = float(np.sqrt(np.mean(np.square(values, dtype=np.float64))))
        assert 0.5 * want < rms < 2.0 * want, f"{info.name}: rms {rms:.3g}, expected about {want:.3g}"


@pytest.mark.parametrize("arch", MY_ARCHS)
def test_metadata_llama_cpp_reads(tmp_path, arch):
    f = open_gguf(write_model(arch, tmp_path / "m.gguf", qtype="Q8_0"))
    for key in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base", "context_length"):
        assert f.arch_get(key) is not None, key
    if arch != "llama" and arch != "qwen2":
        assert f.arch_get("expert_count") >= f.arch_get("expert_used_count") > 0
    assert f.get("tokenizer.ggml.model") == "gpt2"
    assert f.get("general.quantization_version") == 2
    assert f.architecture == ("llama" if arch == "mixtral" else arch)


def test_tokenizer_is_a_valid_byte_level_bpe():
    vocab, merges = bpe_vocab(1000)
    assert len(vocab) == len(set(vocab)) == 1000
    bpe = tokenizers.models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split(" ")) for m in merges])
    tok = tokenizers.Tokenizer(bpe)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    text = "the quick brown fox — héllo 🙂 experts"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges apply


def test_seed_decides_the_weights(tmp_path):
    a = open_gguf(write_model("llama", tmp_path / "a.gguf", seed=1)).tensor("blk.0.attn_q.weight").data
    b = open_gguf(write_model("llama", tmp_path / "b.gguf", seed=1)).tensor("blk.0.attn_q.weight").data
    c = open_gguf(write_model("llama", tmp_path / "c.gguf", seed=2)).tensor("blk.0.attn_q.weight").data
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_k_types_reject_rows_that_are_not_multiples_of_256(tmp_path):
    with pytest.raises(ValueError, match="multiples of 256"):
        write_model("llama", tmp_path / "m.gguf", qtype="Q4_K", config={"hidden_size": 128})


def test_cli(tmp_path):
    out = tmp_path / "cli.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "backend.testmodels", "mixtral", str(out), "--qtype", "Q8_0", "--config", '{"num_hidden_layers": 1}'],
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip() == str(out)
    f = open_gguf(out)
    assert f.arch_get("block_count") == 1 and f.tensor("blk.0.ffn_up_exps.weight").type_name == "Q8_0"
    assert set(MY_ARCHS) <= set(FAMILIES)
