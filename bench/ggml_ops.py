"""llama.cpp's own CPU ops, called alone: MUL_MAT and the MoE FFN built on MUL_MAT_ID, through
ctypes on the ggml libraries that llama-cpp-python ships (the [bench] extra). Bench only.

The graphs are what llama.cpp builds for a model (build_moe_ffn: mul_mat_id gate and up,
swiglu, mul_mat_id down, scale by the router weights, sum the slots), computed by the CPU backend
with a persistent thread pool. Weights go through the CPU backend's repack buffer type when it
accepts the op, as llama.cpp's model loader does, so ggml runs its interleaved GEMM/GEMV kernels
where it has them; `repack=False` measures the plain path. Several weight sets rotate inside one
graph, so the weights are cold in DRAM and the per-graph overhead is shared as in a model graph.
"""

from __future__ import annotations

import ctypes
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
        self.repack_buft = None
        for i in range(8):
            if not extras[i]:
                break
            if self.buft_name(extras[i]) == b"CPU_REPACK":
                self.repack_buft = extras[i]

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

    def _accepts_repack(self, weights, build, inputs) -> bool:
        """llama.cpp's loader test: with the weights in a CPU_REPACK buffer, does the CPU device
        accept every node of the graph?"""
        if self.repack_buft is None:
            return False
        ctx_w, ctx_g, _, _, _, graph = self._graph(weights, 1, build, inputs)
        buffer = self.alloc_from_buft(ctx_w, self.repack_buft)
        try:
            return all(self.supports_op(self.device, self.graph_node(graph, i)) for i in range(self.graph_n_nodes(graph)))
        finally:
            self.buffer_free(buffer)
            self.free(ctx_g)
            self.free(ctx_w)

    def _run(self, weights: list[tuple[int, tuple[int, ...], list[np.ndarray]]], build, inputs, repack: bool, reps: int):
        """weights: (ggml type, ne, one raw array per set) per weight tensor; build(ctx, the weight
        tensors of one set, input tensors) -> output tensor. Returns (best seconds per set, the
        last set's output as float32, whether the weights were repacked)."""
        use_repack = repack and self._accepts_repack(weights, build, inputs)
        n_sets = len(weights[0][2])
        ctx_w, ctx_g, sets, ins, outs, graph = self._graph(weights, n_sets, build, inputs)
        buffers = []
        try:
            buffers.append(self.alloc_from_buft(ctx_w, self.repack_buft if use_repack else self.cpu_buft))
            buffers.append(self.alloc_from_buft(ctx_g, self.cpu_buft))
            for s, tensors in enumerate(sets):
                for tensor, (_, _, arrays) in zip(tensors, weights):
                    self._set(tensor, arrays[s])  # whole tensor at once: the repack buffer needs it so
            for tensor, (_, array) in zip(ins, inputs):
                self._set(tensor, array)
            def compute():
                if self.graph_compute(self.backend, graph) != GGML_STATUS_SUCCESS:
                    raise RuntimeError("ggml graph compute failed")

            best = best_of(compute, reps)
            result = np.empty(self.nbytes(outs[-1]) // 4, dtype=np.float32)
            self.tensor_get(outs[-1], result.ctypes.data, 0, result.nbytes)
            return best / n_sets, result, use_repack
        finally:
            for buffer in buffers:
                self.buffer_free(buffer)
            self.free(ctx_g)
            self.free(ctx_w)

    def matmul(self, qtype: int, raws: list[np.ndarray], n: int, k: int, x: np.ndarray, repack: bool = True, reps: int = 5):
        """y = W x for each raw W [n rows, k cols] of `qtype`, x [T, k] float32.
        Returns (seconds per matmul, y [T, n] of the last W, whether repacked)."""
        T = x.shape[0]
        inputs = [(lambda ctx: self.new_2d(ctx, GGML_TYPE_F32, k, T), x.astype(np.float32))]

        def build(ctx, ws, ins):
            return self.mul_mat(ctx, ws[0], ins[0])

        dt, y, used = self._run([(qtype, (k, n), raws)], build, inputs, repack, reps)
        return dt, y.reshape(T, n), used

    def moe(self, types: tuple[int, int, int], sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], E: int, D: int,
            I: int, x: np.ndarray, ids: np.ndarray, weights: np.ndarray, repack: bool = True, reps: int = 5):  # fmt: skip
        """llama.cpp's MoE FFN (routed experts only) for each (gate [E*I, D], up, down [E*D, I]) raw set.
        x [T, D], ids/weights [T, A]. Returns (seconds per layer, out [T, D] of the last set, repacked)."""
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
        dt, y, used = self._run([(types[j], shapes[j], per_kind[j]) for j in range(3)], build, inputs, repack, reps)
        return dt, y.reshape(T, D), used
