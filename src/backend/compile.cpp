// backend::compile: a backend chosen by name (the CLI's --backend flag, tests).
#include "backend/loss.h"
#include "backend/program.h"
#include "core/error.h"

namespace incres::backend {

std::unique_ptr<Program> compile(const std::string& backend, const graph::Graph& g,
                                 graph::ParamStore& store, Options opt) {
  if (backend == "ref") return compile_ref(g, store, opt);
  if (backend == "cpu") return compile_cpu(g, store, opt);
  fail("unknown backend '", backend, "'; known backends: cpu (oneDNN), ref (naive reference loops)");
}

std::unique_ptr<Loss> compile_loss(const std::string& backend, int64_t batch, int64_t classes, float smoothing) {
  if (backend == "ref") return compile_ref_loss(batch, classes, smoothing);
  if (backend == "cpu") return compile_cpu_loss(batch, classes, smoothing);
  fail("unknown backend '", backend, "'; known backends: cpu (oneDNN), ref (naive reference loops)");
}

}  // namespace incres::backend
