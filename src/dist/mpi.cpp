// The MPI world (Open MPI): every MPI call is made on one communication thread, which
// initialises MPI, runs the collectives the trainer queues in the order they were
// queued, and finalises MPI at exit. The trainer's thread only queues and waits; while
// it waits, it is the watchdog: past the timeout, or on an MPI error (a peer that died
// breaks its TCP connections), it prints one line naming the collective and the step
// and exits, so no rank hangs on a dead one.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"

namespace incres::dist {

namespace {

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    // Ring allreduce (Open MPI's coll/tuned algorithm 4) unless the user chose one: each
    // chunk is reduced once, around the ring, and then copied to every rank, so every
    // rank holds the same bits and a run reduces the same way each time; it is also
    // the bandwidth-optimal algorithm docs/distributed.md's cost model assumes.
    setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", 0);
    setenv("OMPI_MCA_coll_tuned_allreduce_algorithm", "4", 0);
    thread_ = std::thread([this] { serve(); });
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return started_; });
    if (!init_error_.empty()) {
      lock.unlock();
      thread_.join();
      fail(init_error_);
    }
  }

  ~MpiWorld() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string describe() const override { return cat("MPI, rank ", rank_, " of ", size_, " (", version_, ")"); }

  void sum(float* x, int64_t n, const char* what) override { wait_for(submit({Kind::sum_f32, x, n, what})); }
  void sum(double* x, int64_t n, const char* what) override { wait_for(submit({Kind::sum_f64, x, n, what})); }
  void sum(int64_t* x, int64_t n, const char* what) override { wait_for(submit({Kind::sum_i64, x, n, what})); }
  void broadcast(void* x, int64_t bytes, int root, const char* what) override {
    wait_for(submit({Kind::broadcast, x, bytes, what, root}));
  }
  void start_sum(float* x, int64_t n, const char* what) override { submit({Kind::sum_f32, x, n, what}); }
  void wait() override {
    uint64_t last;
    {
      std::lock_guard lock(mu_);
      last = queued_;
    }
    wait_for(last);
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  enum class Kind { sum_f32, sum_f64, sum_i64, broadcast };
  struct Job {
    Kind kind;
    void* data;
    int64_t n;  // elements; bytes for a broadcast
    const char* what;
    int root = 0;  // of a broadcast
    int64_t step = -1;
  };
  static constexpr int kQueue = 256;

  // Queues a job; returns its ticket (1, 2, ...), done once done_ reaches it.
  uint64_t submit(Job j) {
    j.step = step_;
    std::unique_lock lock(mu_);
    INCRES_CHECK(queued_ - done_ < kQueue, "MPI: more than ", kQueue, " collectives queued at once");
    jobs_[queued_ % kQueue] = j;
    const uint64_t ticket = ++queued_;
    lock.unlock();
    cv_.notify_all();
    return ticket;
  }

  void wait_for(uint64_t ticket) {
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_lock lock(mu_);
    while (done_ < ticket && error_.empty()) {
      cv_.wait_for(lock, std::chrono::milliseconds(200));
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (done_ < ticket && error_.empty() && waited > timeout_) {
        const Job& stuck = jobs_[done_ % kQueue];
        die(cat(describe_job(stuck), " has waited ", static_cast<int64_t>(waited),
                " s for the other ranks (--comm-timeout ", timeout_, "): a rank died or hangs"));
      }
    }
    if (!error_.empty()) die(error_);
  }

  std::string describe_job(const Job& j) const {
    return cat(j.what, j.step >= 0 ? cat(" at step ", j.step) : std::string(" before training"));
  }

  // One line, then out at once: the communication thread may be stuck inside MPI, so
  // neither MPI_Finalize nor the destructors could finish.
  [[noreturn]] void die(const std::string& why) {
    std::fprintf(stderr, "incres: error: rank %d of %d: %s; stopping. Resume from the last checkpoint (--resume)\n",
                 rank_, size_, why.c_str());
    std::fflush(stderr);
    std::_Exit(3);
  }

  void serve() {
    int provided = 0;
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      std::lock_guard lock(mu_);
      init_error_ = "MPI_Init_thread failed";
      started_ = true;
      cv_.notify_all();
      return;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    std::string v(version, static_cast<size_t>(len));
    version_ = v.substr(0, v.find(','));
    {
      std::lock_guard lock(mu_);
      started_ = true;
    }
    cv_.notify_all();
    for (;;) {
      Job j;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || done_ < queued_; });
        if (done_ == queued_ && stop_) break;
        j = jobs_[done_ % kQueue];
      }
      const std::string err = run(j);
      {
        std::lock_guard lock(mu_);
        if (!err.empty() && error_.empty()) error_ = cat(describe_job(j), " failed: ", err);
        ++done_;
      }
      cv_.notify_all();
    }
    MPI_Finalize();
  }

  // The job's MPI call(s), in pieces of at most 2^30 elements (MPI counts are ints);
  // "" or MPI's error text.
  static std::string run(const Job& j) {
    MPI_Datatype type = j.kind == Kind::sum_f32   ? MPI_FLOAT
                        : j.kind == Kind::sum_f64 ? MPI_DOUBLE
                        : j.kind == Kind::sum_i64 ? MPI_INT64_T
                                                  : MPI_BYTE;
    int size = 0;
    MPI_Type_size(type, &size);
    constexpr int64_t kPiece = int64_t{1} << 30;
    for (int64_t at = 0; at < j.n; at += kPiece) {
      const int count = static_cast<int>(std::min(kPiece, j.n - at));
      void* p = static_cast<char*>(j.data) + at * size;
      const int rc = j.kind == Kind::broadcast ? MPI_Bcast(p, count, type, j.root, MPI_COMM_WORLD)
                                               : MPI_Allreduce(MPI_IN_PLACE, p, count, type, MPI_SUM, MPI_COMM_WORLD);
      if (rc != MPI_SUCCESS) {
        char text[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, text, &len);
        return std::string(text, static_cast<size_t>(len));
      }
    }
    return "";
  }

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false, stop_ = false;
  std::string init_error_, error_, version_;
  Job jobs_[kQueue];
  uint64_t queued_ = 0, done_ = 0;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world() { return std::make_unique<MpiWorld>(); }

}  // namespace incres::dist
