// backend::compile: a backend chosen by name (the CLI's --backend flag, tests).
#include "backend/loss.h"
#include "backend/program.h"
#include "core/error.h"

#include <cstdlib>

namespace incres::backend {

Precision parse_precision(const std::string& s) {
  if (s == "fp32" || s == "f32") return Precision::f32;
  if (s == "bf16") return Precision::bf16;
  fail("unknown precision '", s, "'; use fp32 or bf16");
}

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

void check_precision(Precision p) {
  if (p == Precision::f32) return;
  INCRES_CHECK(bf16_supported(), "bf16 needs a CPU with AVX512-BF16 or AMX (avx512_bf16 or amx_bf16 in /proc/cpuinfo); "
               "this one runs ", cpu_isa(), getenv("ONEDNN_MAX_CPU_ISA") ? " (capped by ONEDNN_MAX_CPU_ISA)" : "");
}


std::unique_ptr<Program> compile(const std::string& backend, const graph::Graph& g,
                                 graph::ParamStore& store, Options opt) {
  if (backend == "ref") {
    INCRES_CHECK(opt.precision == Precision::f32, "the ref backend runs fp32 only");
    return compile_ref(g, store, opt);
  }
  if (backend == "cpu") return compile_cpu(g, store, opt);
  fail("unknown backend '", backend, "'; known backends: cpu (oneDNN), ref (naive reference loops)");
}

std::unique_ptr<Loss> compile_loss(const std::string& backend, int64_t batch, int64_t classes, float smoothing) {
  if (backend == "ref") return compile_ref_loss(batch, classes, smoothing);
  if (backend == "cpu") return compile_cpu_loss(batch, classes, smoothing);
  fail("unknown backend '", backend, "'; known backends: cpu (oneDNN), ref (naive reference loops)");
}

}  // namespace incres::backend
