// The machine's practical fp32 peak: oneDNN's matmul on 2048^3, the figure every
// incres speed number is divided by ("fraction of peak"). Prints one JSON line.
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 2048;
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  dnnl::memory::desc md({n, n}, dt::f32, tag::ab);
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(md, md, md), eng);
  dnnl::matmul mm(pd);
  std::vector<float> a(n * n, 1.f), b(n * n, 0.5f), c(n * n);
  dnnl::memory A(md, eng, a.data()), B(md, eng, b.data()), C(md, eng, c.data());
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    mm.execute(s, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
    s.wait();
    if (i >= 2) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  double best = *std::min_element(t.begin(), t.end());
  std::printf("{\"what\": \"onednn matmul %lld^3 f32\", \"gflops\": %.1f, \"impl\": \"%s\"}\n",
              static_cast<long long>(n), 2.0 * n * n * n / best / 1e9, pd.impl_info_str());
  return 0;
}
