// Data-parallel collectives (DESIGN.md: dist::Communicator). A process started on its
// own is a world of one, whose collectives do nothing. Started by mpirun or srun, in a
// build with Open MPI, it is one rank of an MPI world: every collective then runs on a
// communication thread of its own, so that a gradient bucket's sum proceeds while
// backward goes on (Open MPI makes no progress on its own between calls), and a rank
// whose collective waits past the timeout for the others exits, naming the collective
// and the training step, instead of hanging.
#pragma once
#include <cstdint>
#include <string>

namespace incres::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "1 process" or "MPI, rank 0 of 2 (Open MPI v4.1.4)".
  virtual std::string describe() const = 0;

  // Blocking sums in place across the ranks. Every rank ends with the same bits, and
  // the same inputs give the same bits run after run (a fixed reduction order). `what`
  // names the collective in errors; it must outlive the call.
  virtual void sum(float* x, int64_t n, const char* what) = 0;
  virtual void sum(double* x, int64_t n, const char* what) = 0;
  virtual void sum(int64_t* x, int64_t n, const char* what) = 0;
  // Rank `root`'s bytes, to every rank.
  virtual void broadcast(void* x, int64_t bytes, int root, const char* what) = 0;
  // A float sum started now, which proceeds while the caller goes on; wait() ends every
  // one started. x is not to be touched until then. Nothing is allocated.
  virtual void start_sum(float* x, int64_t n, const char* what) = 0;
  virtual void wait() = 0;
  // Ends every rank at once with exit code `code`: one rank's error would otherwise
  // leave the others waiting out the timeout.
  [[noreturn]] virtual void abort(int code) = 0;

  // The training step the next collectives belong to, for the messages (-1: none).
  void set_step(int64_t s) { step_ = s; }
  // How long a collective may wait for the other ranks before this rank exits.
  void set_timeout(double seconds) { timeout_ = seconds; }
  double timeout() const { return timeout_; }

 protected:
  int64_t step_ = -1;
  double timeout_ = 60;
};

// Whether this build can run an MPI world, and whether this process was started as
// one rank of one (Open MPI's mpirun, or a PMI / PMIx launcher such as srun).
bool built_with_mpi();
bool launched_by_mpi();

// This process's world, created on first use: MPI when launched by an MPI launcher
// (an Error when this build has no MPI), else a world of one. MPI is initialised once
// per process and finalised at exit.
Communicator& world();

// A world of one process, whose collectives do nothing: what world() is when no MPI
// launcher started this process, and what single-process callers and tests pass.
Communicator& single_process();

}  // namespace incres::dist
