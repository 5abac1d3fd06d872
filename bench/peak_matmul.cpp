// The machine's practical fp32 peak: oneDNN's matmul on 2048^3, the figure every
// incres speed number is divided by ("fraction of peak"); and the bf16 one where
// oneDNN has bf16 kernels for this CPU (AVX512-BF16, AMX), null where it has none.
// Prints one JSON line.
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

// Best GFLOP/s of n^3 matmuls in data type `type`, or a negative number when oneDNN has
// no implementation for it here; impl gets the implementation's name.
double peak(int64_t n, dnnl::memory::data_type type, std::string& impl) {
  using tag = dnnl::memory::format_tag;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  dnnl::memory::desc md({n, n}, type, tag::ab);
  dnnl::matmul::primitive_desc pd;
  try {
    pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(md, md, md), eng);
  } catch (const dnnl::error&) {
    impl = "none";
    return -1;
  }
  impl = pd.impl_info_str();
  dnnl::matmul mm(pd);
  dnnl::memory A(md, eng), B(md, eng), C(md, eng);  // contents do not matter for timing
  std::memset(A.get_data_handle(), 0, md.get_size());
  std::memset(B.get_data_handle(), 0, md.get_size());
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    mm.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
    s.wait();
    if (i >= 2) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(n * n * n) / *std::min_element(t.begin(), t.end()) / 1e9;
}

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 2048;
  std::string f32_impl, bf16_impl;
  const double f32 = peak(n, dnnl::memory::data_type::f32, f32_impl);
  const double bf16 = peak(n, dnnl::memory::data_type::bf16, bf16_impl);
  char bf16_text[32] = "null";
  if (bf16 > 0) std::snprintf(bf16_text, sizeof bf16_text, "%.1f", bf16);
  std::printf("{\"what\": \"onednn matmul %lld^3\", \"gflops\": %.1f, \"impl\": \"%s\", \"bf16_gflops\": %s, "
              "\"bf16_impl\": \"%s\", \"isa\": \"%s\"}\n",
              static_cast<long long>(n), f32, f32_impl.c_str(), bf16_text, bf16_impl.c_str(),
              (static_cast<unsigned>(dnnl::get_effective_cpu_isa()) & 0x27u) == 0x27u ? "avx512" : "avx2 or older");
  return 0;
}
