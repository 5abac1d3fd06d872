// classify CHECKPOINT IMAGE...: the top three classes of each image, through incres's
// embedding API (<incres/incres.h>).
#include <cstdio>
#include <string>
#include <vector>

#include <incres/incres.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT IMAGE...\n", argv[0]);
    return 2;
  }
  try {
    incres::Model model = incres::Model::load(argv[1], {.threads = 2});
    const incres::Info& info = model.info();
    std::printf("%s: %lld parameters, %lld MACs, input %lldx%lldx%lld\n", info.model.c_str(),
                static_cast<long long>(info.params), static_cast<long long>(info.macs),
                static_cast<long long>(info.channels), static_cast<long long>(info.height),
                static_cast<long long>(info.width));
    const std::vector<std::string> files(argv + 2, argv + argc);
    const auto results = model.classify(files, 3);
    for (size_t i = 0; i < files.size(); ++i) {
      std::printf("%s\n", files[i].c_str());
      for (const incres::Prediction& p : results[i])
        std::printf("  %.4f  %s (class %lld)\n", p.probability, p.name.c_str(), static_cast<long long>(p.index));
    }
  } catch (const incres::Error& e) {
    std::fprintf(stderr, "classify: %s\n", e.what());
    return 1;
  }
  return 0;
}
