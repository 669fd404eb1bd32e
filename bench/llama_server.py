"""llama-cpp-python's OpenAI server (`python -m llama_cpp.server`), optionally with llama.cpp's
weight repacking ("extra buffer types") off.

    python bench/llama_server.py --no-repack --model X.gguf --n_threads 2 ...   # llama_cpp.server's flags

Neither the server's flags nor llama_cpp.Llama's keyword arguments reach
llama_model_params.use_extra_bufts, and ggml reads no environment variable for it (its CPU library
knows GGML_CPU_TILED_MM, GGML_CPU_DISABLE_FUSION, nothing about repacking). So --no-repack turns it
off where Llama() takes its defaults, as bench/worker.py's llama.cpp-norepack engine does: on
Xeons with AMX, llama.cpp's repacked AMX buffers crash the process (exit -11).
"""

from __future__ import annotations

import sys


def without_repacking() -> None:
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params  # Llama.__init__ looks it up on this module at each call


def main() -> None:
    if "--no-repack" in sys.argv:
        sys.argv.remove("--no-repack")
        without_repacking()
    from llama_cpp.server.__main__ import main as serve

    serve()


if __name__ == "__main__":
    main()
