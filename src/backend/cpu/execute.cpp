// Running a compiled CPU program: the steps recorded at compile time, in order, with
// profiling on demand; nothing is allocated here.
#include <chrono>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_program.h"
#include "core/error.h"

namespace incres::backend::cpu {

void CpuProgram::run(Step& s) {
  if (profiling_) {
    auto t0 = std::chrono::steady_clock::now();
    profiling_ = false;
    run(s);
    profiling_ = true;
    s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++s.calls;
    return;
  }
  if (s.fn) return s.fn();
  dnnl_status_t status = dnnl_primitive_execute(s.prim.get(), strm_.get(), static_cast<int>(s.args.size()),
                                                s.args.data());
  INCRES_CHECK(status == dnnl_success, "cpu backend: oneDNN could not execute a primitive (status ",
               static_cast<int>(status), ")");
}

void CpuProgram::forward(const float* x) {
  if (!training() && store_.version != prepared_version_) {
    for (Step& s : prep_) run(s);
    prepared_version_ = store_.version;
  }
  if (training()) drawn_step_ = step_++;
  forwarded_ = true;
  in_plain_.set_data_handle(const_cast<float*>(x));
  for (Step& s : fwd_) run(s);
  strm_.wait();
  if (training()) store_.changed();  // the running statistics moved
}

std::vector<StepProfile> CpuProgram::steps() const {
  std::vector<StepProfile> out;
  auto add = [&](const char* phase, const Step& s) {
    const bool edge = s.node < 0;
    out.push_back({phase, edge ? "" : g_.nodes[s.node].name, edge ? "" : graph::op_name(g_.nodes[s.node].op),
                   s.kind, s.impl, s.seconds, s.calls});
  };
  for (const Step& s : prep_) add("prepare", s);
  for (const Step& s : fwd_) add("forward", s);
  for (const Output& o : out_)
    if (o.seed.prim) add("backward", o.seed);
  for (const Step& s : bwd_) add("backward", s);
  return out;
}

const float* CpuProgram::output_impl(int i) const {
  INCRES_CHECK(i >= 0 && i < num_outputs(), "cpu backend: output ", i, " asked of a graph with ",
               num_outputs(), " outputs (the output and ", num_outputs() - 1, " auxiliary ones)");
  INCRES_CHECK(i < static_cast<int>(out_.size()), "cpu backend: auxiliary output ", i,
               " is not computed by an inference program (it runs only what output 0 needs); "
               "compile in train mode to read it");
  return data(out_[i].y);
}

void CpuProgram::backward_impl(const float* dy, std::span<const float* const> aux_dy) {
  INCRES_CHECK(training(), "backward() on a program compiled for inference");
  INCRES_CHECK(forwarded_, "backward() needs a forward() before it (one backward per forward: gradients reuse "
               "the memory of the activations backward has finished with)");
  forwarded_ = false;
  INCRES_CHECK(aux_dy.empty() || aux_dy.size() + 1 == outputs_.size(), "cpu backend: backward() got ",
               aux_dy.size(), " auxiliary gradients for ", outputs_.size() - 1, " auxiliary outputs");
  // Seeds: d(output i) = the caller's gradient, zero where none was given.
  for (size_t i = 0; i < out_.size(); ++i) {
    const float* seed = i == 0 ? dy : aux_dy.empty() ? nullptr : aux_dy[i - 1];
    if (seed) {
      out_[i].dy.set_data_handle(const_cast<float*>(seed));
      run(out_[i].seed);
    } else {
      const memory& d = val_[outputs_[i]].grad;
      std::memset(d.get_data_handle(), 0, d.get_desc().get_size());
    }
  }
  if (!opt_.grad_ready) {
    for (Step& s : bwd_) run(s);
    strm_.wait();
    return;
  }
  for (size_t i = 0; i < bwd_.size(); ++i) {
    run(bwd_[i]);
    if (ready_after_[i].empty()) continue;
    strm_.wait();
    for (int p : ready_after_[i]) opt_.grad_ready(p);
  }
  strm_.wait();
  for (int p : ready_at_end_) opt_.grad_ready(p);
}

const float* CpuProgram::input_grad() const {
  INCRES_CHECK(opt_.input_grad, "input_grad() needs a program compiled with Options::input_grad");
  return data(din_plain_);
}

double CpuProgram::zero_fraction(int v) const {
  INCRES_CHECK(std::find(opt_.probes.begin(), opt_.probes.end(), v) != opt_.probes.end(),
               "cpu backend: zero_fraction(", v, ") of a value not in Options::probes");
  const ValueMemory& m = val_[v];
  // Blocked layouts hold whole blocks of channels (layout.cpp), so every element of
  // the buffer is one of the value's.
  if (!m.act || plan_.values[v].hidden) return std::nan("");
  if (m.md.data_type() == dt::bf16) {  // +0 and -0 in bf16: the high half of a float's zeros
    const int64_t n = static_cast<int64_t>(m.md.get_size() / 2);
    const uint16_t* p = data<uint16_t>(m.act);
    int64_t zeros = 0;
    for (int64_t i = 0; i < n; ++i) zeros += (p[i] & 0x7fff) == 0;
    return static_cast<double>(zeros) / static_cast<double>(n);
  }
  const int64_t n = static_cast<int64_t>(m.md.get_size() / sizeof(float));
  return static_cast<double>(kernels::count_zeros(data(m.act), n)) / static_cast<double>(n);
}

int64_t CpuProgram::planned_bytes() const {
  return static_cast<int64_t>(arena_.nbytes() + scratch_.bytes + tmp_.bytes + fold_.bytes);
}

MemoryPlan CpuProgram::memory_plan() const {
  return {planned_bytes(), static_cast<int64_t>(arena_.nbytes()), static_cast<int64_t>(live_peak_),
          static_cast<int64_t>(unplanned_), static_cast<int64_t>(scratch_.bytes + tmp_.bytes + fold_.bytes),
          static_cast<int64_t>(bufs_.size())};
}

}  // namespace incres::backend::cpu
