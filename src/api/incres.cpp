// The embedding API of include/incres/incres.h, on the same pieces the command line
// uses: train::LoadedModel to load, backend programs compiled once per batch size,
// train::OutputLosses and Sgd for training steps, save_checkpoint to save.
#include <incres/incres.h>

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <string>

#include "backend/program.h"
#include "core/error.h"
#include "data/image.h"
#include "train/checkpoint.h"
#include "train/loaded_model.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace incres {

namespace {

// Every failure leaves the API as incres::Error with the CLI's message; oneDNN's and
// the standard library's exceptions are carried over by their message.
template <class F>
auto guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(e.what());
  }
}

// Options::threads resolved: 0 is OMP_NUM_THREADS where set, else every core.
int resolve_threads(int threads) {
  INCRES_CHECK(threads >= 0, "threads must be >= 0 (0: every core), got ", threads);
  if (threads > 0) return threads;
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return omp_get_num_procs();
}

backend::Precision backend_precision(Precision p) {
  return p == Precision::bf16 ? backend::Precision::bf16 : backend::Precision::f32;
}

// bf16 runs the inference programs; an Error naming the missing CPU feature where it cannot.
void check_precision(Precision p) { backend::check_precision(backend_precision(p)); }

int64_t parse_count(const std::string& key, const std::string& value) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  INCRES_CHECK(used == value.size() && v > 0, "option ", key, ": expected a positive integer, got '", value, "'");
  return v;
}

}  // namespace

struct Model::Impl {
  train::LoadedModel m;
  Options options;
  int threads = 1;
  Info info;
  // Inference programs by batch size, compiled on first use (the last few kept).
  std::map<int64_t, std::unique_ptr<backend::Program>> infer;
  // Training: compiled at the first train_step, again when the batch size changes.
  std::unique_ptr<backend::Program> train;
  int64_t train_batch = 0;
  std::unique_ptr<train::OutputLosses> losses;
  double losses_smoothing = -1, losses_aux = -1;
  std::unique_ptr<train::Sgd> sgd;
  train::SgdOptions sgd_options;
  int64_t steps = 0;

  void finish() {
    const auto& in = m.g->input_shape();
    info.model = m.name;
    info.params = m.g->param_count();
    info.macs = m.g->macs();
    info.channels = in[0];
    info.height = in[1];
    info.width = in[2];
    info.classes = m.mc.classes;
    info.mean = m.mean;
    info.std = m.std;
    info.class_names = m.class_names;
    threads = resolve_threads(options.threads);
  }

  int64_t image_size() const { return info.channels * info.height * info.width; }

  backend::Program& infer_program(int64_t n) {
    auto it = infer.find(n);
    if (it != infer.end()) return *it->second;
    if (infer.size() >= 4) infer.erase(infer.begin());
    auto p = backend::compile("cpu", *m.g, m.weights(),
                              {.batch = n, .mode = backend::Mode::infer, .winograd = options.winograd,
                               .precision = backend_precision(options.precision)});
    return *infer.emplace(n, std::move(p)).first->second;
  }

  std::vector<std::vector<Prediction>> top(const float* logits, int64_t n, int k) const {
    INCRES_CHECK(k >= 1, "top must be >= 1, got ", k);
    std::vector<std::vector<Prediction>> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      for (const auto& [c, p] : train::top_classes(logits + i * info.classes, info.classes, k))
        out[i].push_back({c, p, info.class_names.empty() ? std::string() : info.class_names[c]});
    return out;
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& checkpoint, const Options& options) {
  return guarded([&] {
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    check_precision(options.precision);
    impl->m = train::load_checkpoint_model(checkpoint);
    impl->finish();
    return Model(std::move(impl));
  });
}

namespace {

// The model `model` with the options of Model::load's `arch`, unloaded, and the run
// record save() writes for it: its options, and an image-folder source
// (ImageNet-style images: the 0.875 evaluation crop).
train::LoadedModel configured(const std::string& model, const std::map<std::string, std::string>& arch) {
  const models::ModelConfig d = models::find_model(model).defaults;
  int64_t image = 0, in_channels = d.in_channels, classes = d.classes;
  std::vector<std::pair<std::string, std::string>> rest;
  for (const auto& [key, value] : arch) {
    if (key == "image") image = parse_count(key, value);
    else if (key == "in-channels") in_channels = parse_count(key, value);
    else if (key == "classes") classes = parse_count(key, value);
    else rest.emplace_back(key, value);
  }
  train::LoadedModel m;
  m.name = model;
  m.mc = train::model_config(model, "", image, true, in_channels, classes, rest);
  m.mean = in_channels == 3 ? data::kImageNetMean : std::vector<float>(static_cast<size_t>(in_channels), 0.f);
  m.std = in_channels == 3 ? data::kImageNetStd : std::vector<float>(static_cast<size_t>(in_channels), 1.f);
  train::RunRecord& r = m.record;
  r.config.model = model;
  r.config.model_options = rest;
  r.config.shortcut = m.mc.shortcut == models::Shortcut::A ? "A" : m.mc.shortcut == models::Shortcut::B ? "B" : "C";
  r.config.image = m.mc.image;
  r.config.data = "imagefolder:";
  r.in_channels = in_channels;
  r.classes = classes;
  r.mean = m.mean;
  r.std = m.std;
  m.build();
  return m;
}

}  // namespace

Model Model::load(const std::string& weights, const std::string& model,
                  const std::map<std::string, std::string>& arch, const Options& options) {
  return guarded([&] {
    check_precision(options.precision);
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    impl->m = configured(model, arch);
    impl->m.load_weights(weights);
    impl->finish();
    return Model(std::move(impl));
  });
}

Model Model::create(const std::string& model, const std::map<std::string, std::string>& arch, uint64_t seed,
                    const Options& options) {
  return guarded([&] {
    check_precision(options.precision);
    auto impl = std::make_unique<Impl>();
    impl->options = options;
    impl->m = configured(model, arch);
    impl->m.store->init(*impl->m.g, seed);
    impl->finish();
    return Model(std::move(impl));
  });
}

const Info& Model::info() const { return impl_->info; }

void Model::set_threads(int threads) {
  guarded([&] { impl_->threads = resolve_threads(threads); });
}

void Model::set_precision(Precision p) {
  guarded([&] {
    check_precision(p);
    if (p != impl_->options.precision) impl_->infer.clear();
    impl_->options.precision = p;
  });
}

std::vector<float> Model::logits(const float* images, int64_t n) {
  return guarded([&] {
    INCRES_CHECK(images != nullptr && n >= 1, "logits: expected n >= 1 images, got ", n,
                 images ? "" : " and a null pointer");
    omp_set_num_threads(impl_->threads);
    backend::Program& p = impl_->infer_program(n);
    p.forward(images);
    return std::vector<float>(p.output(), p.output() + n * impl_->info.classes);
  });
}

std::vector<std::vector<Prediction>> Model::classify(const float* images, int64_t n, int top) {
  return guarded([&] {
    INCRES_CHECK(top >= 1, "top must be >= 1, got ", top);
    const std::vector<float> l = logits(images, n);
    return impl_->top(l.data(), n, top);
  });
}

std::vector<std::vector<Prediction>> Model::classify(const std::vector<std::string>& files, int top) {
  return guarded([&] {
    INCRES_CHECK(!files.empty(), "classify: no image files given");
    INCRES_CHECK(top >= 1, "top must be >= 1, got ", top);
    const Info& in = impl_->info;
    INCRES_CHECK(in.channels == 3, in.model, " takes ", in.channels,
                 "-channel input; image files are decoded as RGB for 3-channel models");
    std::vector<float> batch;
    batch.reserve(static_cast<size_t>(files.size() * impl_->image_size()));
    for (const std::string& f : files) {
      const std::vector<float> x =
          data::load_eval_image(f, in.height, in.mean, in.std, {}, impl_->m.crop_fraction);
      batch.insert(batch.end(), x.begin(), x.end());
    }
    return classify(batch.data(), static_cast<int64_t>(files.size()), top);
  });
}

double Model::train_step(const float* images, const int32_t* labels, int64_t n, const TrainOptions& o) {
  return guarded([&] {
    INCRES_CHECK(images != nullptr && labels != nullptr && n >= 1, "train_step: expected n >= 1 images and labels");
    INCRES_CHECK(o.lr >= 0 && o.momentum >= 0 && o.momentum < 1 && o.weight_decay >= 0 && o.label_smoothing >= 0 &&
                     o.label_smoothing < 1 && o.aux_weight >= 0,
                 "train_step: lr, weight decay and aux weight must be >= 0, momentum and label smoothing in [0, 1)");
    Impl& d = *impl_;
    omp_set_num_threads(d.threads);
    if (d.m.ema) {  // train the weights themselves; inference follows them from now on
      d.m.ema.reset();
      d.infer.clear();
    }
    graph::ParamStore& store = *d.m.store;
    if (!d.train || d.train_batch != n) {
      d.train = backend::compile("cpu", *d.m.g, store, {.batch = n, .mode = backend::Mode::train});
      d.train->set_step(d.steps);
      d.train_batch = n;
      d.losses.reset();
    }
    if (!d.losses || d.losses_smoothing != o.label_smoothing || d.losses_aux != o.aux_weight) {
      d.losses = std::make_unique<train::OutputLosses>(*d.m.g, n, d.info.classes, o.label_smoothing, o.aux_weight);
      d.losses_smoothing = o.label_smoothing;
      d.losses_aux = o.aux_weight;
    }
    const train::SgdOptions so{.momentum = o.momentum, .weight_decay = o.weight_decay};
    if (!d.sgd || d.sgd_options.momentum != so.momentum || d.sgd_options.weight_decay != so.weight_decay) {
      d.sgd = std::make_unique<train::Sgd>(*d.m.g, store, so);
      d.sgd_options = so;
    }
    d.train->forward(images);
    const train::OutputLosses::Result r = d.losses->backward(*d.train, labels, n);
    INCRES_CHECK(std::isfinite(r.total), "train_step: the loss is not finite (", r.total,
                 "); lower the learning rate");
    d.sgd->step(o.lr);
    ++d.steps;
    return r.total;
  });
}

void Model::save(const std::string& checkpoint) const {
  guarded([&] {
    const Impl& d = *impl_;
    train::CheckpointState s;
    s.model = d.m.name;
    s.step = d.steps;
    s.config = train::to_json(d.m.record).dump();
    // A moving average still in use is what is saved (as the weights themselves).
    train::save_checkpoint(checkpoint, *d.m.g, d.m.ema ? d.m.ema->averages() : *d.m.store, nullptr, nullptr, s);
  });
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const models::ModelInfo& m : models::registry()) names.push_back(m.name);
  return names;
}

}  // namespace incres
