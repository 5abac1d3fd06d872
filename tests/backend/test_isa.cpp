// Which instruction set this run of the backend tests uses. ctest runs them natively
// (label backend) and, on CPUs with AVX-512, again capped to AVX2 (label backend_avx2,
// ONEDNN_MAX_CPU_ISA=AVX2): the AVX2 path of the same binary, which AVX2-only
// machines run. Each run prints its ISA first; the capped run skips every test, with
// the reason, on a CPU without AVX-512, where it would only repeat the native one.
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "backend/program.h"

namespace incres {
namespace {

std::string capped_to() {
  const char* cap = std::getenv("ONEDNN_MAX_CPU_ISA");
  return cap ? cap : "";
}

class IsaEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    const std::string cap = capped_to();
    std::cout << "backend tests on oneDNN ISA " << backend::cpu_isa() << " (ONEDNN_MAX_CPU_ISA="
              << (cap.empty() ? "unset" : cap) << "; the CPU has " << (__builtin_cpu_supports("avx512f") ? "" : "no ")
              << "AVX-512)\n";
    if (cap == "AVX2" && !__builtin_cpu_supports("avx512f"))
      GTEST_SKIP() << "this CPU has no AVX-512: the native run already took the AVX2 path";
  }
};

const testing::Environment* const kIsa = testing::AddGlobalTestEnvironment(new IsaEnvironment);

TEST(CpuIsa, CappedRunUsesAvx2) {
  const std::string isa = backend::cpu_isa();
  if (capped_to() == "AVX2") {
    EXPECT_EQ(isa.rfind("avx2", 0), 0u) << "ONEDNN_MAX_CPU_ISA=AVX2, but oneDNN dispatches to " << isa;
  } else if (__builtin_cpu_supports("avx512f")) {
    EXPECT_EQ(isa.rfind("avx512", 0), 0u) << "the CPU has AVX-512, but oneDNN dispatches to " << isa;
  } else {
    EXPECT_EQ(isa.rfind("avx512", 0), std::string::npos) << "no AVX-512 on this CPU, but oneDNN reports " << isa;
  }
}

}  // namespace
}  // namespace incres
