"""llama.cpp's own CPU ops, called alone: MUL_MAT and the MoE FFN built on MUL_MAT_ID, through
ctypes on the ggml libraries that llama-cpp-python ships (the [bench] extra). Bench only.

The graphs are what llama.cpp builds for a model (build_moe_ffn: mul_mat_id gate and up,
swiglu, mul_mat_id down, scale by the router weights, sum the slots), computed by the CPU backend
with a persistent thread pool. Each op runs on every weight buffer llama.cpp's model loader could
pick for it: the CPU device's extra buffer types that accept the op (AMX tiles where the CPU has
them, CPU_REPACK's interleaved GEMM/GEMV) and the plain buffer; the caller gets every time and
compares against the fastest. Several weight sets rotate inside one
graph, so the weights are cold in DRAM and the per-graph overhead is shared as in a model graph.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import numpy as np
from side_by_side import best_of

c_p = ctypes.c_void_p
GGML_STATUS_SUCCESS = 0
GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", c_p), ("no_alloc", ctypes.c_bool)]


class ThreadpoolParams(ctypes.Structure):  # ggml.h: cpumask[GGML_MAX_N_THREADS = 512], ...
    _fields_ = [("cpumask", ctypes.c_bool * 512), ("n_threads", ctypes.c_int), ("prio", ctypes.c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", ctypes.c_bool), ("paused", ctypes.c_bool)]  # fmt: skip


def _libs() -> dict[str, ctypes.CDLL]:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    mode = ctypes.RTLD_GLOBAL
    return {name: ctypes.CDLL(str(lib_dir / f"lib{name}.so"), mode=mode) for name in ("ggml-base", "ggml-cpu", "ggml")}


def _declare(lib: ctypes.CDLL, name: str, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


class Ggml:
    """One CPU backend with `threads` threads; each op call builds, computes and frees its graph."""

    def __init__(self, threads: int):
        self.threads = threads
        libs = _libs()
        base, cpu = libs["ggml-base"], libs["ggml-cpu"]
        i64 = ctypes.c_int64
        self.init = _declare(base, "ggml_init", c_p, InitParams)
        self.free = _declare(base, "ggml_free", None, c_p)
        self.new_2d = _declare(base, "ggml_new_tensor_2d", c_p, c_p, ctypes.c_int, i64, i64)
        self.new_3d = _declare(base, "ggml_new_tensor_3d", c_p, c_p, ctypes.c_int, i64, i64, i64)
        self.mul_mat = _declare(base, "ggml_mul_mat", c_p, c_p, c_p, c_p)
        self.mul_mat_id = _declare(base, "ggml_mul_mat_id", c_p, c_p, c_p, c_p, c_p)
        self.swiglu_split = _declare(base, "ggml_swiglu_split", c_p, c_p, c_p, c_p)
        self.mul = _declare(base, "ggml_mul", c_p, c_p, c_p, c_p)
        self.add = _declare(base, "ggml_add", c_p, c_p, c_p, c_p)
        self.view_2d = _declare(base, "ggml_view_2d", c_p, c_p, c_p, i64, i64, ctypes.c_size_t, ctypes.c_size_t)
        self.nbytes = _declare(base, "ggml_nbytes", ctypes.c_size_t, c_p)
        self.new_graph = _declare(base, "ggml_new_graph_custom", c_p, c_p, ctypes.c_size_t, ctypes.c_bool)
        self.graph_overhead = _declare(base, "ggml_graph_overhead_custom", ctypes.c_size_t, ctypes.c_size_t, ctypes.c_bool)
        self.tensor_overhead = _declare(base, "ggml_tensor_overhead", ctypes.c_size_t)
        self.expand = _declare(base, "ggml_build_forward_expand", None, c_p, c_p)
        self.graph_n_nodes = _declare(base, "ggml_graph_n_nodes", ctypes.c_int, c_p)
        self.graph_node = _declare(base, "ggml_graph_node", c_p, c_p, ctypes.c_int)
        self.alloc_from_buft = _declare(base, "ggml_backend_alloc_ctx_tensors_from_buft", c_p, c_p, c_p)
        self.buffer_free = _declare(base, "ggml_backend_buffer_free", None, c_p)
        self.tensor_set = _declare(base, "ggml_backend_tensor_set", None, c_p, c_p, ctypes.c_size_t, ctypes.c_size_t)
        self.tensor_get = _declare(base, "ggml_backend_tensor_get", None, c_p, c_p, ctypes.c_size_t, ctypes.c_size_t)
        self.graph_compute = _declare(base, "ggml_backend_graph_compute", ctypes.c_int, c_p, c_p)
        self.supports_op = _declare(base, "ggml_backend_dev_supports_op", ctypes.c_bool, c_p, c_p)
        self.buft_name = _declare(base, "ggml_backend_buft_name", ctypes.c_char_p, c_p)
        get_device = _declare(base, "ggml_backend_get_device", c_p, c_p)
        dev_reg = _declare(base, "ggml_backend_dev_backend_reg", c_p, c_p)
        proc = _declare(base, "ggml_backend_reg_get_proc_address", c_p, c_p, ctypes.c_char_p)

        self.backend = _declare(cpu, "ggml_backend_cpu_init", c_p)()
        _declare(cpu, "ggml_backend_cpu_set_n_threads", None, c_p, ctypes.c_int)(self.backend, threads)
        params = ThreadpoolParams()
        _declare(base, "ggml_threadpool_params_init", None, ctypes.POINTER(ThreadpoolParams), ctypes.c_int)(
            ctypes.byref(params), threads)  # fmt: skip
        self.threadpool = _declare(cpu, "ggml_threadpool_new", c_p, ctypes.POINTER(ThreadpoolParams))(ctypes.byref(params))
        _declare(cpu, "ggml_backend_cpu_set_threadpool", None, c_p, c_p)(self.backend, self.threadpool)
        self.cpu_buft = _declare(cpu, "ggml_backend_cpu_buffer_type", c_p)()
        self.device = get_device(self.backend)
        get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(c_p), c_p)(proc(dev_reg(self.device), b"ggml_backend_dev_get_extra_bufts"))
        extras = get_extra(self.device)
        # llama.cpp's loader tries these in order (AMX where the CPU has it, then CPU_REPACK)
        # before the plain CPU buffer, and takes the first the device accepts for the op
        self.extra_bufts: dict[str, int] = {}
        for i in range(8):
            if not extras[i]:
                break
            self.extra_bufts[self.buft_name(extras[i]).decode()] = extras[i]

    def _context(self, n_tensors: int) -> int:
        size = n_tensors * self.tensor_overhead() + self.graph_overhead(4096, False)
        ctx = self.init(InitParams(size, None, True))
        if not ctx:
            raise RuntimeError("ggml_init failed")
        return ctx

    def _set(self, tensor: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.nbytes != self.nbytes(tensor):
            raise ValueError(f"{array.nbytes} bytes for a {self.nbytes(tensor)}-byte tensor")
        self.tensor_set(tensor, array.ctypes.data, 0, array.nbytes)

    def _graph(self, weights, n_sets: int, build, inputs):
        """Contexts, tensors and graph (nothing allocated) for n_sets rotated weight sets."""
        ctx_w = self._context(8 + len(weights) * n_sets)
        ctx_g = self._context(64 + 32 * n_sets)
        sets = [[(self.new_3d if len(shape) == 3 else self.new_2d)(ctx_w, qtype, *shape) for qtype, shape, _ in weights]
                for _ in range(n_sets)]  # fmt: skip
        ins = [new_tensor(ctx_g) for new_tensor, _ in inputs]
        outs = [build(ctx_g, ts, ins) for ts in sets]
        graph = self.new_graph(ctx_g, 4096, False)
        for out in outs:
            self.expand(graph, out)
        return ctx_w, ctx_g, sets, ins, outs, graph

    def _accepts(self, buft: int, weights, build, inputs) -> bool:
        """llama.cpp's loader test: with the weights in a `buft` buffer, does the CPU device
        accept every node of the graph?"""
        ctx_w, ctx_g, _, _, _, graph = self._graph(weights, 1, build, inputs)
        buffer = self.alloc_from_buft(ctx_w, buft)
        try:
            return all(self.supports_op(self.device, self.graph_node(graph, i)) for i in range(self.graph_n_nodes(graph)))
        finally:
            self.buffer_free(buffer)
            self.free(ctx_g)
            self.free(ctx_w)

    def paths(self, weights, build, inputs, probe: tuple[str, tuple]) -> list[str]:
        """The weight buffers llama.cpp's loader could place these weights in: every extra buffer
        type the device accepts for the graph and computes it on without dying, and "plain"."""
        accepted = [name for name, buft in self.extra_bufts.items() if self._accepts(buft, weights, build, inputs)]
        return [name for name in accepted if self._survives(probe, name)] + ["plain"]

    def _survives(self, probe: tuple[str, tuple], path: str) -> bool:
        """Does one compute of `probe` (a method of this class and its arguments, one weight set)
        on `path` finish? Tried in a fresh interpreter, because an extra buffer type can accept an
        op it then crashes on: llama-cpp-python 0.3.36's AMX matmul dies (SIGILL or SIGSEGV in
        ggml_backend_amx_mul_mat) for more than one token on a Sapphire Rapids VM. Spawned, not
        forked: a forked child has none of ggml's OpenMP workers and waits for them forever."""
        child = multiprocessing.get_context("spawn").Process(target=_probe, args=(self.threads, *probe, path))
        child.start()
        child.join()
        if child.exitcode == 0:
            return True
        why = signal.Signals(-child.exitcode).name if child.exitcode < 0 else f"exit code {child.exitcode}"
        print(f"llama.cpp's {path} path died ({why}); not compared", file=sys.stderr, flush=True)
        return False

    def _run(self, weights: list[tuple[int, tuple[int, ...], list[np.ndarray]]], build, inputs, reps: int,
             probe: tuple[str, tuple], only: str | None):  # fmt: skip
        """weights: (ggml type, ne, one raw array per set) per weight tensor; build(ctx, the weight
        tensors of one set, input tensors) -> output tensor. Runs every path of `paths` (or `only`)
        and returns ({path: best seconds per set}, the last set's output of the fastest path as float32)."""
        times, outputs = {}, {}
        for path in [only] if only else self.paths(weights, build, inputs, probe):
            times[path], outputs[path] = self._run_on(weights, build, inputs, path, reps)
        fastest = min(times, key=times.get)
        return times, outputs[fastest]

    def _run_on(self, weights, build, inputs, path: str, reps: int):
        n_sets = len(weights[0][2])
        ctx_w, ctx_g, sets, ins, outs, graph = self._graph(weights, n_sets, build, inputs)
        buffers = []
        try:
            buffers.append(self.alloc_from_buft(ctx_w, self.extra_bufts.get(path, self.cpu_buft)))
            buffers.append(self.alloc_from_buft(ctx_g, self.cpu_buft))
            for s, tensors in enumerate(sets):
                for tensor, (_, _, arrays) in zip(tensors, weights):
                    self._set(tensor, arrays[s])  # whole tensor at once: the extra buffers repack it so
            for tensor, (_, array) in zip(ins, inputs):
                self._set(tensor, array)
            def compute():
                if self.graph_compute(self.backend, graph) != GGML_STATUS_SUCCESS:
                    raise RuntimeError("ggml graph compute failed")

            best = best_of(compute, reps)
            result = np.empty(self.nbytes(outs[-1]) // 4, dtype=np.float32)
            self.tensor_get(outs[-1], result.ctypes.data, 0, result.nbytes)
            return best / n_sets, result
        finally:
            for buffer in buffers:
                self.buffer_free(buffer)
            self.free(ctx_g)
            self.free(ctx_w)

    def matmul(self, qtype: int, raws: list[np.ndarray], n: int, k: int, x: np.ndarray, reps: int = 5,
               only: str | None = None):  # fmt: skip
        """y = W x for each raw W [n rows, k cols] of `qtype`, x [T, k] float32, on every path
        (or `only` that one). Returns ({path: seconds per matmul}, y [T, n] of the last W)."""
        T = x.shape[0]
        inputs = [(lambda ctx: self.new_2d(ctx, GGML_TYPE_F32, k, T), x.astype(np.float32))]

        def build(ctx, ws, ins):
            return self.mul_mat(ctx, ws[0], ins[0])

        probe = ("matmul", (qtype, raws[:1], n, k, x))
        times, y = self._run([(qtype, (k, n), raws)], build, inputs, reps, probe, only)
        return times, y.reshape(T, n)

    def moe(self, types: tuple[int, int, int], sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], E: int, D: int,
            I: int, x: np.ndarray, ids: np.ndarray, weights: np.ndarray, reps: int = 5, only: str | None = None):  # fmt: skip
        """llama.cpp's MoE FFN (routed experts only) for each (gate [E*I, D], up, down [E*D, I]) raw set.
        x [T, D], ids/weights [T, A], on every path (or `only` that one). Returns ({path: seconds
        per layer}, out [T, D] of the last set)."""
        T, A = ids.shape
        inputs = [
            (lambda ctx: self.new_3d(ctx, GGML_TYPE_F32, D, 1, T), x.astype(np.float32)),
            (lambda ctx: self.new_2d(ctx, GGML_TYPE_I32, A, T), ids.astype(np.int32)),
            (lambda ctx: self.new_3d(ctx, GGML_TYPE_F32, 1, A, T), weights.astype(np.float32)),
        ]

        def build(ctx, ws, ins):
            gate_exps, up_exps, down_exps = ws
            cur, sel, w = ins
            gate = self.mul_mat_id(ctx, gate_exps, cur, sel)  # [I, A, T]
            up = self.mul_mat_id(ctx, up_exps, cur, sel)
            act = self.swiglu_split(ctx, gate, up)
            experts = self.mul(ctx, self.mul_mat_id(ctx, down_exps, act, sel), w)  # [D, A, T]
            row = D * 4  # nb1 of [D, A, T] f32
            out = self.view_2d(ctx, experts, D, T, row * A, 0)
            for a in range(1, A):
                out = self.add(ctx, out, self.view_2d(ctx, experts, D, T, row * A, row * a))
            return out

        shapes = [(D, I, E), (D, I, E), (I, D, E)]
        per_kind = [[s[j] for s in sets] for j in range(3)]
        probe = ("moe", (types, sets[:1], E, D, I, x, ids, weights))
        times, y = self._run([(types[j], shapes[j], per_kind[j]) for j in range(3)], build, inputs, reps, probe, only)
        return times, y.reshape(T, D)


def _probe(threads: int, op: str, args: tuple, path: str) -> None:
    """Ggml._survives' child: one compute of Ggml.`op`(*args) on `path` alone."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the repack chatter
    getattr(Ggml(threads), op)(*args, reps=0, only=path)
