// Persistent worker threads: spin briefly for the next job, then sleep; the caller is worker 0.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moe {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  int size() const { return (int)workers_.size() + 1; }

  // Runs fn(task) for task in [0, num_tasks), tasks handed out dynamically. Kernels make each
  // task own its outputs, so results never depend on which thread ran what.
  void parallel_for(int64_t num_tasks, const std::function<void(int64_t)> &fn);

 private:
  void worker_loop();
  void run_tasks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> busy_{0};
  std::atomic<int64_t> next_task_{0};
  int64_t num_tasks_ = 0;
  const std::function<void(int64_t)> *fn_ = nullptr;
  bool stopping_ = false;
};

}  // namespace moe
