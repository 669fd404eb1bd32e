#include "threadpool.h"

#include <algorithm>
#include <chrono>
#include <system_error>

namespace moe {

ThreadPool::ThreadPool(int num_threads) {
  // An absurd count (40000 from a request) must neither abort the process nor throw across the
  // C ABI: at most 1024 threads (or one per hardware thread on bigger machines), and when the
  // OS refuses one (std::system_error), the pool runs with the workers it has.
  const int limit = std::max(1024, (int)std::thread::hardware_concurrency());
  num_threads = std::min(num_threads, limit);
  for (int i = 1; i < num_threads; ++i) {
    try {
      workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error &) {
      break;
    }
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto &w : workers_) w.join();
}

void ThreadPool::run_tasks() {
  for (int64_t t; (t = next_task_.fetch_add(1)) < num_tasks_;) (*fn_)(t);
}

void ThreadPool::parallel_for(int64_t num_tasks, const std::function<void(int64_t)> &fn) {
  if (workers_.empty() || num_tasks <= 1) {
    for (int64_t t = 0; t < num_tasks; ++t) fn(t);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    num_tasks_ = num_tasks;
    next_task_.store(0);
    busy_.store((int)workers_.size());
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  run_tasks();
  while (busy_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // Spin a little first: decode steps come every few milliseconds, and waking a sleeping
    // thread costs tens of microseconds.
    auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < spin_until) {
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
    }
    run_tasks();
    busy_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace moe
