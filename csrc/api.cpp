// Exported kernels: argument checks, then the active ISA's kernels on the thread pool.
#include "api.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels_isa.h"
#include "quants/formats.h"
#include "threadpool.h"

namespace moe {

const IsaKernels &active_kernels() {
  static const IsaKernels tables[] = {
      {scalar::dequantize, scalar::tile_matmul, scalar::rows_matmul},
      {avx2::dequantize, avx2::tile_matmul, avx2::rows_matmul},
      {avx512::dequantize, avx512::tile_matmul, avx512::rows_matmul},
  };
  return tables[moe_isa_active()];
}

namespace {

struct Runtime {
  std::mutex mutex;  // guards replacing the pool; kernels run under it (one caller at a time)
  std::unique_ptr<ThreadPool> pool;
  int num_threads = 0;
};

Runtime &runtime() {
  static Runtime rt;  // built on first use: no thread starts at library load
  return rt;
}

int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? (int)n : 1;
}

ThreadPool &pool_locked(Runtime &rt) {
  if (!rt.pool) {
    if (rt.num_threads <= 0) rt.num_threads = default_threads();
    rt.pool = std::make_unique<ThreadPool>(rt.num_threads);
  }
  return *rt.pool;
}

// Rows per task: enough to amortise the tile's dequantization, few enough to balance 2..64 threads.
constexpr int64_t kTileRows = 16;

}  // namespace
}  // namespace moe

using namespace moe;

MOE_API int moe_type_supported(int type) { return geometry(type).block_size > 0; }

MOE_API int moe_row_bytes(int type, int64_t k) {
  const Geometry g = geometry(type);
  if (g.block_size == 0 || k % g.block_size) return -1;
  return (int)(k / g.block_size * g.type_size);
}

MOE_API int moe_set_num_threads(int n) {
  if (n < 0) return -1;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  rt.pool.reset();
  rt.num_threads = n;  // 0: the default
  return 0;
}

MOE_API int moe_num_threads(void) {
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  return pool_locked(rt).size();
}

MOE_API int moe_dequantize(int type, const void *src, int64_t src_bytes, float *dst, int64_t n) {
  const Geometry g = geometry(type);
  if (g.block_size == 0) return MOE_ERR_TYPE;
  if (!src || !dst || n < 0 || n % g.block_size) return MOE_ERR_SHAPE;
  const int64_t blocks = n / g.block_size;
  if (src_bytes < blocks * g.type_size) return MOE_ERR_SIZE;
  active_kernels().dequantize(type, (const uint8_t *)src, dst, g.block_size == 1 ? n : blocks);
  return 0;
}

MOE_API int moe_matmul(int type, const void *weight, int64_t weight_bytes, int64_t n, int64_t k, const float *x,
                       int64_t num_tokens, float *y) {
  const Geometry g = geometry(type);
  if (g.block_size == 0) return MOE_ERR_TYPE;
  if (!weight || !x || !y || n <= 0 || k <= 0 || num_tokens < 0 || k % g.block_size) return MOE_ERR_SHAPE;
  const int64_t row_bytes = k / g.block_size * g.type_size;
  if (weight_bytes < n * row_bytes) return MOE_ERR_SIZE;
  if (num_tokens == 0) return 0;
  const IsaKernels &kern = active_kernels();
  const int64_t count_per_row = g.block_size == 1 ? k : k / g.block_size;
  Runtime &rt = runtime();
  std::lock_guard<std::mutex> lock(rt.mutex);
  ThreadPool &pool = pool_locked(rt);
  const int64_t num_tiles = (n + kTileRows - 1) / kTileRows;
  if (num_tokens <= kMaxDecodeTokens) {
    pool.parallel_for(num_tiles, [&](int64_t tile) {
      const int64_t row0 = tile * kTileRows, rows = std::min(kTileRows, n - row0);
      kern.rows_matmul(type, (const uint8_t *)weight + row0 * row_bytes, row_bytes, rows, k, x, num_tokens, k,
                       y + row0, n);
    });
    return 0;
  }
  pool.parallel_for(num_tiles, [&](int64_t tile) {
    // Each thread's dequantized tile (16 rows), kept between calls.
    thread_local std::vector<float> w;
    if ((int64_t)w.size() < kTileRows * k) w.resize(kTileRows * k);
    const int64_t row0 = tile * kTileRows, rows = std::min(kTileRows, n - row0);
    const uint8_t *src = (const uint8_t *)weight + row0 * row_bytes;
    for (int64_t r = 0; r < rows; ++r) kern.dequantize(type, src + r * row_bytes, w.data() + r * k, count_per_row);
    kern.tile_matmul(w.data(), rows, k, x, num_tokens, k, y + row0, n);
  });
  return 0;
}
