"""A tiny model whose GGUF claims any context length, the lie of a hostile or broken file."""

import numpy as np
from gguf import Keys

from backend.testmodels import add_tokenizer, family, finish, model_config, start_writer
from backend.testmodels.common import TensorWriter


def write_claiming_context(path, claimed: int) -> None:
    """The tiny llama with a context_length of `claimed`, as uint64 (gguf-py's uint32 key
    cannot hold 2^40)."""
    fam, cfg = family("llama"), model_config("llama")
    writer = start_writer(path, fam.GGUF_ARCH["llama"], "F32")
    key = Keys.LLM.CONTEXT_LENGTH.format(arch=writer.arch)
    writer.add_context_length = lambda _: writer.add_uint64(key, claimed)
    add_tokenizer(writer, cfg["vocab_size"], pre=fam.TOKENIZER_PRE["llama"])
    fam.write(writer, cfg, TensorWriter(writer, "F32", np.random.default_rng(1)), "llama")
    finish(writer)
