// The world of one, and the choice of world.
#include "dist/communicator.h"

#include <cstdlib>
#include <memory>

#include "core/error.h"

namespace incres::dist {

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string describe() const override { return "1 process"; }
  void sum(float*, int64_t, const char*) override {}
  void sum(double*, int64_t, const char*) override {}
  void sum(int64_t*, int64_t, const char*) override {}
  void broadcast(void*, int64_t, int, const char*) override {}
  void start_sum(float*, int64_t, const char*) override {}
  void wait() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

}  // namespace

#ifdef INCRES_WITH_MPI
std::unique_ptr<Communicator> make_mpi_world();  // mpi.cpp
bool built_with_mpi() { return true; }
#else
bool built_with_mpi() { return false; }
#endif

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (const char* s = std::getenv(v); s && *s) return true;
  return false;
}

Communicator& single_process() {
  static SingleProcess one;
  return one;
}

Communicator& world() {
  static std::unique_ptr<Communicator> w = []() -> std::unique_ptr<Communicator> {
    if (!launched_by_mpi()) return nullptr;
#ifdef INCRES_WITH_MPI
    return make_mpi_world();
#else
    fail("this process was started by an MPI launcher, but this incres was built without MPI; install "
         "libopenmpi-dev (scripts/install-deps.sh does) and rebuild");
#endif
  }();
  return w ? *w : single_process();
}

}  // namespace incres::dist
