#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>
#include <type_traits>

#include "core/error.h"
#include "core/log.h"
#include "dist/gradient_exchange.h"
#include "io/safetensors.h"
#include "models/models.h"
#include "train/checkpoint.h"
#include "backend/outputs.h"
#include "train/data_source.h"
#include "train/ema.h"
#include "train/loss.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/run_folder.h"
#include "train/schedule.h"

namespace incres::train {

namespace fs = std::filesystem;

nlohmann::json to_json(const TrainConfig& c) {
  nlohmann::json options = nlohmann::json::array();
  for (const auto& [k, v] : c.model_options) options.push_back({k, v});
  return {{"model", c.model}, {"shortcut", c.shortcut}, {"image", c.image}, {"aux", c.aux},
          {"model_options", options},
          {"data", c.data},
          {"train_limit", c.train_limit}, {"test_limit", c.test_limit}, {"skip_bad", c.skip_bad}, {"epochs", c.epochs},
          {"iters", c.iters}, {"batch", c.batch}, {"recipe", c.recipe}, {"schedule", c.schedule},
          {"lr", c.lr}, {"milestones", c.milestones}, {"gamma", c.gamma},
          {"decay_rate", c.decay_rate}, {"decay_epochs", c.decay_epochs},
          {"warmup_iters", c.warmup_iters}, {"warmup_lr", c.warmup_lr},
          {"warmup_kind", c.warmup_kind}, {"optimizer", c.optimizer}, {"momentum", c.momentum},
          {"weight_decay", c.weight_decay}, {"nesterov", c.nesterov},
          {"no_decay_bn_bias", c.no_decay_bn_bias}, {"rmsprop_decay", c.rmsprop_decay},
          {"rmsprop_epsilon", c.rmsprop_epsilon}, {"clip_norm", c.clip_norm},
          {"ema_decay", c.ema_decay}, {"aux_weight", c.aux_weight},
          {"label_smoothing", c.label_smoothing}, {"augment", c.augment}, {"seed", c.seed},
          {"eval_every", c.eval_every}, {"backend", c.backend}, {"precision", c.precision},
          {"ranks", c.ranks}, {"sync_bn", c.sync_bn}};
}

TrainConfig config_from_json(const nlohmann::json& j) {
  TrainConfig c;
  auto get = [&](const char* key, auto& field) {
    if (j.contains(key) && !j[key].is_null()) field = j[key].get<std::remove_reference_t<decltype(field)>>();
  };
  get("model", c.model);
  get("shortcut", c.shortcut);
  get("image", c.image);
  get("aux", c.aux);
  if (j.contains("model_options") && j["model_options"].is_array())
    for (const auto& kv : j["model_options"]) c.model_options.emplace_back(kv.at(0).get<std::string>(), kv.at(1).get<std::string>());
  get("data", c.data);
  get("train_limit", c.train_limit);
  get("test_limit", c.test_limit);
  get("skip_bad", c.skip_bad);
  get("epochs", c.epochs);
  get("iters", c.iters);
  get("batch", c.batch);
  get("recipe", c.recipe);
  get("schedule", c.schedule);
  get("lr", c.lr);
  get("milestones", c.milestones);
  get("gamma", c.gamma);
  get("decay_rate", c.decay_rate);
  get("decay_epochs", c.decay_epochs);
  get("warmup_iters", c.warmup_iters);
  get("warmup_lr", c.warmup_lr);
  get("warmup_kind", c.warmup_kind);
  get("optimizer", c.optimizer);
  get("momentum", c.momentum);
  get("weight_decay", c.weight_decay);
  get("nesterov", c.nesterov);
  get("no_decay_bn_bias", c.no_decay_bn_bias);
  get("rmsprop_decay", c.rmsprop_decay);
  get("rmsprop_epsilon", c.rmsprop_epsilon);
  get("clip_norm", c.clip_norm);
  get("ema_decay", c.ema_decay);
  get("aux_weight", c.aux_weight);
  get("label_smoothing", c.label_smoothing);
  get("augment", c.augment);
  get("seed", c.seed);
  get("eval_every", c.eval_every);
  get("backend", c.backend);
  get("precision", c.precision);
  get("ranks", c.ranks);
  get("sync_bn", c.sync_bn);
  return c;
}

nlohmann::json to_json(const RunRecord& r) {
  nlohmann::json j = to_json(r.config);
  j["in_channels"] = r.in_channels;
  j["num_classes"] = r.classes;
  j["mean"] = r.mean;
  j["std"] = r.std;
  if (!r.class_names.empty()) j["class_names"] = r.class_names;
  return j;
}

RunRecord run_record_from_json(const nlohmann::json& j) {
  RunRecord r;
  r.config = config_from_json(j);
  if (!j.contains("image")) {  // before the input size was recorded: 32x32 CIFAR nets, shortcut A
    r.config.image = 32;
    r.config.shortcut = "A";
  }
  r.in_channels = j.value("in_channels", int64_t{0});
  r.classes = j.value("num_classes", int64_t{0});
  if (j.contains("mean") && j.contains("std")) {
    r.mean = j["mean"].get<std::vector<float>>();
    r.std = j["std"].get<std::vector<float>>();
  }
  if (j.contains("class_names")) r.class_names = j["class_names"].get<std::vector<std::string>>();
  return r;
}

RunRecord read_run_record(const std::string& checkpoint) {
  const io::SafeTensors st = io::load_safetensors(checkpoint);
  nlohmann::json j;
  if (auto it = st.metadata.find("config"); it != st.metadata.end()) j = nlohmann::json::parse(it->second, nullptr, false);
  INCRES_CHECK(j.is_object() && j.contains("model"), checkpoint,
               ": no incres run configuration in the metadata; is this a checkpoint written by `incres train`? "
               "(a plain state_dict takes --weights FILE --model NAME)");
  return run_record_from_json(j);
}

models::ModelConfig model_config(const RunRecord& r, int64_t in_channels, int64_t classes) {
  return model_config(r.config.model, r.config.shortcut, r.config.image, r.config.aux,
                      in_channels > 0 ? in_channels : r.in_channels, classes > 0 ? classes : r.classes,
                      r.config.model_options);
}

TrainConfig recipe_defaults(const std::string& recipe) {
  TrainConfig c;  // its defaults are the resnet recipe
  c.recipe = recipe;
  if (recipe == "resnet") return c;
  INCRES_CHECK(recipe == "inception", "unknown recipe '", recipe, "'; use resnet or inception");
  c.optimizer = "rmsprop";
  c.rmsprop_decay = 0.9;   // Inception-v3 paper, Sec. 8: "decay of 0.9 and epsilon = 1.0"
  c.rmsprop_epsilon = 1.0;
  c.momentum = 0.9;        // TF-slim train_image_classifier's rmsprop_momentum
  c.weight_decay = 4e-5;   // TF-slim inception_v3_arg_scope(weight_decay=0.00004)
  c.no_decay_bn_bias = true;
  c.lr = 0.045;            // "learning rate of 0.045, decayed every two epochs
  c.schedule = "exp";      //  using an exponential rate of 0.94"
  c.decay_rate = 0.94;
  c.decay_epochs = 2;
  c.clip_norm = 2.0;       // "gradient clipping with threshold 2.0"
  c.label_smoothing = 0.1; // Sec. 7, epsilon = 0.1
  c.aux_weight = 0.4;      // the released code's aux loss weight (the paper gives none)
  c.ema_decay = 0.9999;    // "a running average of the parameters"; TF-slim's usual decay
  return c;
}

void apply_recipe(TrainConfig& c, const std::string& recipe, const std::function<bool(const char*)>& given) {
  const TrainConfig r = recipe_defaults(recipe);
  c.recipe = r.recipe;
  auto unless_given = [&](const char* flag, auto member) {
    if (!given || !given(flag)) c.*member = r.*member;
  };
  unless_given("--optimizer", &TrainConfig::optimizer);
  unless_given("--lr", &TrainConfig::lr);
  unless_given("--schedule", &TrainConfig::schedule);
  unless_given("--decay-rate", &TrainConfig::decay_rate);
  unless_given("--decay-epochs", &TrainConfig::decay_epochs);
  unless_given("--momentum", &TrainConfig::momentum);
  unless_given("--weight-decay", &TrainConfig::weight_decay);
  unless_given("--no-decay-bn-bias", &TrainConfig::no_decay_bn_bias);
  unless_given("--rmsprop-decay", &TrainConfig::rmsprop_decay);
  unless_given("--rmsprop-epsilon", &TrainConfig::rmsprop_epsilon);
  unless_given("--clip-norm", &TrainConfig::clip_norm);
  unless_given("--ema", &TrainConfig::ema_decay);
  unless_given("--aux-weight", &TrainConfig::aux_weight);
  unless_given("--label-smoothing", &TrainConfig::label_smoothing);
}

std::string default_recipe(const std::string& model) {
  return model.rfind("inception", 0) == 0 ? "inception" : "resnet";
}

DataPair load_data(const std::string& spec) {
  auto colon = spec.find(':');
  std::string kind = spec.substr(0, colon);
  std::string dir = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (kind == "fashion-mnist") {
    if (dir.empty()) dir = data::kFashionMnistDir;
    return {data::load_fashion_mnist(dir, true), data::load_fashion_mnist(dir, false)};
  }
  if (kind == "cifar10" || kind == "cifar100") {
    INCRES_CHECK(!dir.empty(), "--data ", kind, " needs the folder of the binary files: --data ", kind, ":DIR");
    int classes = kind == "cifar10" ? 10 : 100;
    return {data::load_cifar(dir, true, classes), data::load_cifar(dir, false, classes)};
  }
  INCRES_CHECK(kind != "imagefolder", "--data ", spec, " is an image folder, decoded on the fly; it has no "
               "in-memory form (load_data)");
  fail("unknown dataset '", spec, "': expected fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR or imagefolder:DIR");
}

bool is_image_folder(const std::string& spec) { return spec.rfind("imagefolder", 0) == 0; }

std::string image_folder_dir(const std::string& spec) {
  const auto colon = spec.find(':');
  INCRES_CHECK(spec.substr(0, colon) == "imagefolder" && colon != std::string::npos && colon + 1 < spec.size(),
               "--data ", spec, ": expected imagefolder:DIR, DIR holding train/ and val/ with one sub-folder per class");
  return spec.substr(colon + 1);
}

data::ImageFolder scan_split(const std::string& spec, const std::string& split,
                             const std::vector<std::string>& classes) {
  const fs::path root = fs::path(image_folder_dir(spec)) / split;
  std::error_code ec;
  INCRES_CHECK(fs::is_directory(root, ec), "--data ", spec, ": no folder ", root.string(), " (expected ",
               image_folder_dir(spec), "/train and ", image_folder_dir(spec), "/val, one sub-folder per class)");
  data::ImageFolder f = data::scan_image_folder(root.string());
  if (!classes.empty()) {
    size_t i = 0;
    while (i < classes.size() && i < f.classes.size() && classes[i] == f.classes[i]) ++i;
    if (i < classes.size() || i < f.classes.size())
      fail(root.string(), " has ", f.classes.size(), " class folders and the training split ", classes.size(),
           "; the class lists must be the same (first difference at class ", i, ": '",
           i < classes.size() ? classes[i] : "(none)", "' in train, '", i < f.classes.size() ? f.classes[i] : "(none)",
           "' in ", split, ")");
  }
  return f;
}

data::ImageFolder limit_files(const data::ImageFolder& f, int64_t n) {
  if (n <= 0 || n >= f.count()) return f;
  data::ImageFolder out = f;
  out.files.clear();
  out.labels.clear();
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i * f.count() / n);
    out.files.push_back(f.files[k]);
    out.labels.push_back(f.labels[k]);
  }
  return out;
}

data::Transform image_transform(const std::string& recipe, int64_t image, bool training, bool augment) {
  if (!training || !augment) return data::CenterCrop{.size = image};
  if (recipe == "inception") return data::RandomResizedCrop{.size = image};
  // The paper's [256, 480] for 224x224 crops, scaled to the model's input.
  auto side = [&](int64_t s224) { return std::max<int64_t>(image, (image * s224 + 112) / 224); };
  return data::ScaleAugment{.size = image, .min_side = side(256), .max_side = side(480)};
}

data::ImageLoaderOptions image_loader_options(const std::string& recipe, int64_t image, int64_t batch,
                                              bool training, bool augment, uint64_t seed, int workers,
                                              bool skip_bad) {
  data::ImageLoaderOptions o;
  o.batch = batch;
  o.shuffle = training;
  o.drop_last = training;
  o.transform = image_transform(recipe, image, training, augment);
  o.mean = data::kImageNetMean;
  o.std = data::kImageNetStd;
  o.seed = seed;
  o.workers = workers;
  o.skip_bad = skip_bad;
  return o;
}

models::ModelConfig model_config(const std::string& model, const std::string& shortcut, int64_t image,
                                 bool aux, int64_t in_channels, int64_t classes,
                                 const std::vector<std::pair<std::string, std::string>>& options) {
  models::ModelConfig mc = models::find_model(model).defaults;
  for (const auto& [key, value] : options) {
    models::check_option_applies(model, key);
    models::set_option(mc, key, value);
  }
  mc.in_channels = in_channels;
  mc.classes = classes;
  if (!aux) models::check_option_applies(model, "aux");
  if (!shortcut.empty()) {
    const models::Shortcut s = models::parse_shortcut(shortcut);
    // A run records its resolved shortcut, the default one of models without shortcuts too.
    if (s != mc.shortcut) models::check_option_applies(model, "shortcut");
    mc.shortcut = s;
  }
  if (image > 0) mc.image = image;
  mc.aux = mc.aux && aux;
  return mc;
}

data::Dataset fit_images(const data::Dataset& ds, int64_t image) {
  if (image < 2 * std::max(ds.height, ds.width)) return ds;
  return data::resized(ds, image - 8);
}

FittedData fit_data(DataPair data, int64_t image, int64_t train_limit, int64_t test_limit) {
  FittedData d;
  const int64_t h = data.train.height, w = data.train.width;
  const bool resize = image >= 2 * std::max(h, w);  // as fit_images
  // Of the pixels as stored: no image is resized for the statistics.
  std::tie(d.mean, d.std) = data::channel_mean_std(data.train);
  if (train_limit > 0) data.train = data::subset(data.train, std::min(train_limit, data.train.count));
  if (test_limit > 0) data.test = data::subset(data.test, std::min(test_limit, data.test.count));
  d.train = fit_images(data.train, image);
  d.test = fit_images(data.test, image);
  if (resize)
    log_info(cat("resized the ", h, "x", w, " images to ", d.train.height, "x", d.train.width,
                 " (zero-padded to the model's ", image, "x", image, ")"));
  return d;
}

data::LoaderOptions loader_options(const FittedData& d, int64_t image, int64_t batch, bool training, bool augment,
                                   uint64_t seed, int workers) {
  data::LoaderOptions o;
  o.batch = batch;
  o.shuffle = training;
  o.drop_last = training;
  o.augment = training && augment;
  const data::Dataset& ds = training ? d.train : d.test;
  INCRES_CHECK(ds.height <= image && ds.width <= image, "images of ", ds.height, "x", ds.width,
               " do not fit the model's ", image, "x", image, " input");
  o.out_size = image;
  o.mean = d.mean;
  o.std = d.std;
  o.seed = seed;
  o.workers = workers;
  return o;
}

OutputLosses::OutputLosses(const graph::Graph& g, int64_t batch, int64_t K, double smoothing, double aux_weight,
                           const std::string& backend)
    : K_(K), smoothing_(static_cast<float>(smoothing)), aux_weight_(aux_weight) {
  INCRES_CHECK(std::isfinite(aux_weight) && aux_weight >= 0, "--aux-weight must be >= 0, got ", aux_weight);
  loss_ = backend::compile_loss(backend, batch, K, smoothing_);
  INCRES_CHECK(g.output_shape().numel() == K, "the model's output has ", g.output_shape().str(), " values per image, ",
               "expected ", K, " class logits");
  dy_.resize(static_cast<size_t>(batch * K));
  for (int v : g.aux_outputs) {
    INCRES_CHECK(g.values[v].shape.numel() == K, "the model's auxiliary output has ", g.values[v].shape.str(),
                 " values per image, expected ", K, " class logits");
    aux_dy_.emplace_back(aux_weight > 0 ? static_cast<size_t>(batch * K) : 0);
    aux_ptrs_.push_back(aux_weight > 0 ? aux_dy_.back().data() : nullptr);
  }
}

OutputLosses::Result OutputLosses::backward(backend::Program& program, const int32_t* labels, int64_t n) {
  INCRES_CHECK(program.num_outputs() == 1 + num_aux(), "the program has ", program.num_outputs(),
               " outputs, expected ", 1 + num_aux(), " (compiled from another graph?)");
  Result r;
  const LossResult main = loss_->run(program.output(0), labels, n, dy_.data());
  r.main.loss = main.loss;
  r.main.correct = main.correct;
  if (aux_weight_ > 0)
    for (int i = 0; i < num_aux(); ++i)
      r.aux += loss_->run(program.output(i + 1), labels, n, aux_dy_[i].data(), aux_weight_).loss;
  r.total = r.main.loss + aux_weight_ * r.aux;
  program.backward(dy_.data(), aux_ptrs_);
  return r;
}

EvalResult evaluate(backend::Program& program, data::BatchSource& loader, int64_t classes,
                    dist::Communicator& comm) {
  EvalResult r;
  double loss_sum = 0;
  int64_t correct = 0, correct5 = 0;
  Calibration calibration;
  std::unique_ptr<backend::Loss> loss;  // the program's backend's, planned for the largest batch so far
  int64_t planned = 0;
  loader.start_epoch(0);
  while (const data::Batch* b = loader.next()) {
    if (b->size == 0) continue;  // a shard past the end of the last partial batch
    program.forward(b->images.data<float>());
    const float* logits = program.output();
    if (b->size > planned) loss = backend::compile_loss(program.backend_name(), planned = b->size, classes, 0.f);
    const LossResult l = loss->run(logits, b->labels.data(), b->size, nullptr);
    loss_sum += l.loss * static_cast<double>(b->size);
    correct += l.correct;
    // With fewer than 5 classes every label is in the top K: top-5 error is 0.
    correct5 += topk_correct(logits, b->labels.data(), b->size, classes,
                             static_cast<int>(std::min<int64_t>(5, classes)));
    calibration.add(logits, b->labels.data(), b->size, classes);
    r.count += b->size;
  }
  if (comm.size() > 1) {
    int64_t counts[3] = {correct, correct5, r.count};
    comm.sum(counts, 3, "the sum of the evaluation counts");
    comm.sum(&loss_sum, 1, "the sum of the evaluation loss");
    calibration.sum_across(comm);
    correct = counts[0], correct5 = counts[1], r.count = counts[2];
  }
  INCRES_CHECK(r.count > 0, "evaluation set is empty");
  r.loss = loss_sum / static_cast<double>(r.count);
  r.error = 100.0 * (1.0 - static_cast<double>(correct) / static_cast<double>(r.count));
  r.top5_error = 100.0 * (1.0 - static_cast<double>(correct5) / static_cast<double>(r.count));
  r.ece = calibration.ece();
  return r;
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

namespace {

// Checks of the options the library adds to the CLI's own range checks, so that a
// caller of run_training gets the same one-line errors.
// The settings a resumed run would change, as "--flag recorded -> given" joined by
// "; ": every recorded key that decides the result (not --eval-every, which only logs
// more often, nor what follows from --data). Keys a checkpoint does not record
// (written by an older incres) pass.
std::string resume_differences(const std::string& recorded_text, const std::string& given_text) {
  const nlohmann::json recorded = nlohmann::json::parse(recorded_text, nullptr, false);
  const nlohmann::json given = nlohmann::json::parse(given_text, nullptr, false);
  if (!recorded.is_object() || !given.is_object()) return "";
  const std::map<std::string, std::string> flags = {
      {"ema_decay", "--ema"}, {"aux", "--no-aux"}, {"augment", "--no-augment"},
      {"model_options", "the architecture options"}, {"sync_bn", "--sync-bn"},
      {"ranks", "the number of processes (mpirun -np; with --sync-bn any number resumes)"}};
  std::string out;
  for (auto it = given.begin(); it != given.end(); ++it) {
    // Not compared: logging only, and what follows from the data (compared itself).
    static const std::set<std::string> skip = {"eval_every", "in_channels", "num_classes", "mean", "std",
                                               "class_names"};
    if (skip.count(it.key()) || !recorded.contains(it.key()) || recorded[it.key()] == it.value()) continue;
    std::string flag = "--" + it.key();
    std::replace(flag.begin(), flag.end(), '_', '-');
    if (auto f = flags.find(it.key()); f != flags.end()) flag = f->second;
    out += cat(out.empty() ? "" : "; ", flag, " ", recorded[it.key()].dump(), " -> ", it.value().dump());
  }
  return out;
}

// The value entering the main head's global average pool: the last block's output,
// where Inception-v4's Sec. 3.3 saw units die. -1 for a net without one.
int pool_input(const graph::Graph& g) {
  const std::vector<bool> live = backend::live_nodes(g, backend::Mode::infer);
  for (size_t i = g.nodes.size(); i-- > 0;)
    if (live[i] && std::holds_alternative<graph::GlobalAvgPool>(g.nodes[i].op)) return g.nodes[i].inputs[0];
  return -1;
}

// The training program, or, where the machine lacks the memory for it, an Error with
// both figures and the largest batch that fits: the plan grows linearly with the
// batch, so two small compiles give its slope.
// `base`: the data-parallel hooks (backend::Options); batch: this process's share.
std::unique_ptr<backend::Program> compile_checked(const TrainConfig& cfg, const graph::Graph& g,
                                                  graph::ParamStore& store, int64_t batch,
                                                  const backend::Options& base = {}) {
  backend::check_precision(backend::parse_precision(cfg.precision));
  auto compile = [&](int64_t b) {
    backend::Options o = base;
    o.batch = b;
    o.mode = backend::Mode::train;
    o.seed = cfg.seed;
    if (const int v = pool_input(g); v >= 0) o.probes = {v};  // the dead-unit probe of the metrics (pool_input_zeros)
    o.precision = backend::parse_precision(cfg.precision);
    return backend::compile(cfg.backend, g, store, o);
  };
  try {
    return compile(batch);
  } catch (const backend::OutOfMemory& e) {
    std::string fits;
    if (batch > 2) {
      try {
        const double one = static_cast<double>(compile(1)->planned_bytes());
        const double per_image = static_cast<double>(compile(2)->planned_bytes()) - one;
        // The inference program of the evaluation needs about a third of that again.
        const double budget = static_cast<double>(e.available) * 0.75;
        const int64_t best = per_image > 0 ? static_cast<int64_t>((budget - one) / per_image) + 1 : 0;
        fits = best >= 1 ? cat("; the largest batch that fits is about ", best, " (--batch ", best, ")")
                         : std::string("; not even batch 1 fits");
      } catch (const backend::OutOfMemory&) {
        fits = "; not even batch 1 fits";
      }
    }
    fail(e.what(), " (beyond the parameters, optimizer state and dataset, already in memory)", fits,
         ". Lower --batch, or --image");
  }
}

// The test hook of the divergence rollback: INCRES_TEST_NAN_AT_STEP=N makes the loss
// of step N NaN. -1 when unset.
int64_t test_nan_step() {
  const char* v = std::getenv("INCRES_TEST_NAN_AT_STEP");
  return v && *v ? std::atoll(v) : -1;
}

void check_config(const TrainConfig& cfg) {
  INCRES_CHECK(cfg.batch > 0, "--batch must be positive, got ", cfg.batch);
  INCRES_CHECK(cfg.comm_timeout > 0, "--comm-timeout must be positive, got ", cfg.comm_timeout);
  INCRES_CHECK(cfg.on_nonfinite == "stop" || cfg.on_nonfinite == "rollback", "--on-nonfinite '", cfg.on_nonfinite,
               "': stop or rollback");
  INCRES_CHECK(cfg.epochs > 0 || cfg.iters > 0, "give the length of the run: --epochs N or --iters N");
  INCRES_CHECK(cfg.label_smoothing >= 0 && cfg.label_smoothing < 1, "--label-smoothing must be in [0, 1), got ",
               cfg.label_smoothing);
  INCRES_CHECK(cfg.optimizer == "sgd" || cfg.optimizer == "rmsprop", "--optimizer '", cfg.optimizer,
               "' is unknown; use sgd or rmsprop");
  INCRES_CHECK(!cfg.nesterov || cfg.optimizer == "sgd", "--nesterov applies to --optimizer sgd, not ",
               cfg.optimizer);
  INCRES_CHECK(std::isfinite(cfg.clip_norm) && cfg.clip_norm >= 0,
               "--clip-norm must be >= 0 (0 = no clipping), got ", cfg.clip_norm);
  INCRES_CHECK(cfg.ema_decay == 0 || (cfg.ema_decay > 0 && cfg.ema_decay < 1),
               "--ema must be in (0, 1) (0 = no moving average), got ", cfg.ema_decay);
  INCRES_CHECK(std::isfinite(cfg.aux_weight) && cfg.aux_weight >= 0, "--aux-weight must be >= 0, got ",
               cfg.aux_weight);
  INCRES_CHECK(!cfg.skip_bad || is_image_folder(cfg.data), "--skip-bad applies to --data imagefolder:DIR, not ",
               cfg.data);
  if (cfg.schedule == "exp")
    INCRES_CHECK(std::isfinite(cfg.decay_epochs) && cfg.decay_epochs > 0,
                 "--decay-epochs must be > 0, got ", cfg.decay_epochs);
}

std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& cfg, const graph::Graph& g,
                                          graph::ParamStore& store) {
  if (cfg.optimizer == "rmsprop")
    return std::make_unique<RmsProp>(g, store, RmsPropOptions{cfg.rmsprop_decay, cfg.rmsprop_epsilon,
                                                              cfg.momentum, cfg.weight_decay,
                                                              cfg.no_decay_bn_bias});
  return std::make_unique<Sgd>(g, store, SgdOptions{cfg.momentum, cfg.weight_decay, cfg.nesterov,
                                                    cfg.no_decay_bn_bias});
}

Schedule make_schedule(const TrainConfig& cfg, int64_t ipe, int64_t total) {
  ScheduleOptions so;
  so.kind = cfg.schedule;
  so.lr = cfg.lr;
  so.gamma = cfg.gamma;
  if (cfg.schedule != "multistep") {
    INCRES_CHECK(cfg.milestones.empty(), "--milestones apply to --schedule multistep, not ", cfg.schedule);
  } else if (cfg.milestones.empty()) {  // the paper's 32k and 48k of 64k iterations
    for (int64_t m : {total / 2, total * 3 / 4})
      if (m > 0 && (so.milestones.empty() || m > so.milestones.back())) so.milestones.push_back(m);
  } else {
    so.milestones = parse_milestones(cfg.milestones, ipe);
  }
  if (cfg.schedule == "exp") {
    // TF-slim: decay_steps = int(images per epoch / batch * epochs per decay).
    so.decay_rate = cfg.decay_rate;
    so.decay_iters = static_cast<int64_t>(cfg.decay_epochs * static_cast<double>(ipe));
    INCRES_CHECK(so.decay_iters >= 1, "--decay-epochs ", cfg.decay_epochs, " is less than one iteration (",
                 ipe, " iterations per epoch); raise it");
  }
  so.warmup_iters = cfg.warmup_iters;
  so.warmup_lr = cfg.warmup_lr;
  so.warmup_kind = cfg.warmup_kind;
  so.total_iters = total;
  return Schedule(so);
}

}  // namespace

namespace {

// Data-parallel: the processes this run trains on, with its --comm-timeout, and the
// configuration as they resolve it (ranks = their number; --batch, the global batch,
// split evenly). Ranks other than 0 log nothing: rank 0 speaks for the run.
dist::Communicator& join_world(const TrainConfig& cfg) {
  dist::Communicator& w = dist::world();
  w.set_timeout(cfg.comm_timeout);
  if (w.rank() > 0) set_log_silent(true);
  return w;
}
TrainConfig resolved(TrainConfig c, const dist::Communicator& w) {
  c.ranks = w.size();
  INCRES_CHECK(c.batch % c.ranks == 0, "--batch ", c.batch, " is the global batch and must split evenly over the ",
               c.ranks, " processes; give a multiple of ", c.ranks);
  INCRES_CHECK(!c.sync_bn || c.backend == "cpu", "--sync-bn needs the cpu backend");
  return c;
}

std::string broadcast_text(dist::Communicator& comm, std::string text, int root) {
  int64_t n = static_cast<int64_t>(text.size());
  comm.broadcast(&n, sizeof n, root, "the broadcast of a run's description");
  text.resize(static_cast<size_t>(n));
  comm.broadcast(text.data(), n, root, "the broadcast of a run's description");
  return text;
}

// Every process must hold what rank 0 holds (`mine`): else an Error on every rank,
// naming the lowest rank that differs and `difference(rank 0's, its)`.
void check_same(dist::Communicator& comm, const std::string& mine, const char* differs,
                const std::function<std::string(const std::string&, const std::string&)>& difference) {
  const std::string first = broadcast_text(comm, mine, 0);
  const std::string diff = comm.rank() == 0 ? "" : difference(first, mine);
  std::vector<int64_t> differ(static_cast<size_t>(comm.size()));
  differ[static_cast<size_t>(comm.rank())] = !diff.empty();
  comm.sum(differ.data(), comm.size(), "the comparison of the processes' runs");
  const auto it = std::find(differ.begin(), differ.end(), 1);
  if (it == differ.end()) return;
  const int r = static_cast<int>(it - differ.begin());
  fail("rank ", r, " ", differs, ": ", broadcast_text(comm, diff, r), "; give every process the same command line");
}

// "tensor 3 is 'name' [shape] there, 'name' [shape] on rank 0", from lists of "name
// shape" lines; "" when equal.
std::string first_tensor_difference(const std::string& rank0, const std::string& mine) {
  std::istringstream a(rank0), b(mine);
  std::string la, lb;
  for (int64_t i = 0;; ++i) {
    const bool ha = static_cast<bool>(std::getline(a, la)), hb = static_cast<bool>(std::getline(b, lb));
    if (!ha && !hb) return "";
    if (ha && hb && la == lb) continue;
    if (!hb) return cat("it has ", i, " tensors; rank 0's tensor ", i, " is ", la);
    if (!ha) return cat("it has more tensors than rank 0's ", i, ", the next being ", lb);
    return cat("its tensor ", i, " is ", lb, ", rank 0's ", la);
  }
}

// A hash of the trainable weights' bytes (FNV-1a), to check that the processes agree.
uint64_t weights_hash(const graph::Graph& g, const graph::ParamStore& store) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < g.params.size(); ++i) {
    if (!g.params[i].trainable()) continue;
    const auto* p = static_cast<const unsigned char*>(store.values[i].raw());
    for (size_t k = 0; k < store.values[i].nbytes(); ++k) h = (h ^ p[k]) * 0x100000001b3ull;
  }
  return h;
}

// One span of training steps: from a log point (or a resume) to the next one, or to
// the step a non-finite loss or gradient stopped it at.
struct Span {
  int64_t start = 0;
  double lr = 0, loss_sum = 0, aux_sum = 0, norm_sum = 0, norm_max = 0, seconds = 0;
  int64_t correct = 0, seen = 0, steps = 0, clipped = 0, skipped = 0;
  std::string diverged;  // what went non-finite, when a rollback follows
  int64_t bad_step = -1;
  double exposed = 0;  // data-parallel: seconds per step the gradient exchange outlasted backward
};

// A training run: set up in phases by the constructor (output folder, data, model,
// optimizer, resume, programs, log), then train() runs span after span, each ended by
// an evaluation, a metrics row and a checkpoint, or by a rollback.
class Run {
 public:
  explicit Run(const TrainConfig& cfg)
      : comm_(join_world(cfg)), cfg_(resolved(cfg, comm_)), local_batch_(cfg_.batch / cfg_.ranks),
        folder_(open_folder(cfg_, comm_)),
        data_(cfg_.data, Splits::train_and_test, cfg_.train_limit, cfg_.test_limit),
        mc_(model_config(cfg_.model, cfg_.shortcut, cfg_.image, cfg_.aux, data_.in_channels, data_.classes,
                         cfg_.model_options)),
        g_(models::build_model(cfg_.model, mc_)), store_(g_) {
    data_.open(mc_.image, {.recipe = cfg_.recipe, .batch = local_batch_, .augment = cfg_.augment, .seed = cfg_.seed,
                           .workers = cfg_.workers, .skip_bad = cfg_.skip_bad,
                           .shard = {.index = comm_.rank(), .count = comm_.size()}});
    store_.init(g_, cfg_.seed);
    ipe_ = data_.train->batches_per_epoch();
    total_ = cfg_.iters > 0 ? cfg_.iters : cfg_.epochs * ipe_;
    schedule_ = make_schedule(cfg_, ipe_, total_);
    opt_ = make_optimizer(cfg_, g_, store_);
    record();
    if (comm_.size() > 1) agree();
    // The average starts at the initial weights; a resume overwrites it with the saved one.
    if (cfg_.ema_decay > 0) ema_ = std::make_unique<Ema>(g_, store_, cfg_.ema_decay);
    if (!cfg_.resume.empty()) restore();
  }

  TrainResult train() {
    result_.params = g_.param_count();
    result_.macs = g_.macs();
    if (result_.already_finished) return result_;
    compile();
    open_log();
    log_info(cat("training ", cfg_.model, " (", g_.param_count(), " params, ", g_.macs() / 1e6, " MMACs) on ",
                 data_.source, ": ", data_.count, " images, ", ipe_, " steps/epoch, ", total_, " steps, batch ",
                 cfg_.batch, ", ", opt_->name(), cfg_.clip_norm > 0 ? cat(", clip ", cfg_.clip_norm) : "",
                 ema_ ? cat(", ema ", cfg_.ema_decay) : "", ", backend ", program_->backend_name(), cfg_.precision == "bf16" ? ", bf16" : ""));
    losses_ = std::make_unique<OutputLosses>(g_, local_batch_, mc_.classes, cfg_.label_smoothing, cfg_.aux_weight,
                                             cfg_.backend);
    while (step_ < total_) {
      Span span = run_span();
      if (!span.diverged.empty()) {
        roll_back(span);
        continue;
      }
      end_span(span);
      if (step_ == cfg_.stop_after) break;
    }
    return result_;
  }

 private:
  // First: a bad --out or a folder in use fails before any work. Rank 0 alone writes
  // the folder.
  static std::unique_ptr<RunFolder> open_folder(const TrainConfig& cfg, const dist::Communicator& comm) {
    return cfg.out_dir.empty() || comm.rank() > 0 ? nullptr : std::make_unique<RunFolder>(cfg.out_dir);
  }

  // Data-parallel: every process builds the same model with the same settings (an
  // Error on every rank naming the first difference, never silent corruption), and
  // starts from rank 0's initial weights.
  void agree() {
    std::string tensors;
    for (const graph::Param& p : g_.params) tensors += cat("'", p.name, "' ", p.shape.str(), "\n");
    check_same(comm_, tensors, "built another model than rank 0", first_tensor_difference);
    check_same(comm_, cs_.config, "was started with other settings than rank 0 (rank 0's -> its)",
               [](const std::string& a, const std::string& b) { return resume_differences(a, b); });
    for (Tensor& t : store_.values)
      comm_.broadcast(t.raw(), static_cast<int64_t>(t.nbytes()), 0, "the broadcast of rank 0's initial weights");
    store_.changed();
  }

  // Data-parallel, before an evaluation and a checkpoint: every process takes rank 0's
  // BatchNorm running statistics (and their moving average), as PyTorch DDP does at
  // each forward, which each process's own batches moved; then all check that their
  // weights are bit for bit rank 0's.
  void share_state() {
    for (size_t i = 0; i < g_.params.size(); ++i) {
      if (g_.params[i].trainable()) continue;
      Tensor& t = store_.values[i];
      comm_.broadcast(t.raw(), static_cast<int64_t>(t.nbytes()), 0, "the broadcast of the BatchNorm statistics");
      if (ema_) {
        Tensor& a = ema_->averages().values[i];
        comm_.broadcast(a.raw(), static_cast<int64_t>(a.nbytes()), 0, "the broadcast of the BatchNorm statistics");
      }
    }
    store_.changed();
    if (ema_) ema_->averages().changed();
    uint64_t h = weights_hash(g_, store_), h0 = h;
    comm_.broadcast(&h0, sizeof h0, 0, "the comparison of the processes' weights");
    int64_t differ[1] = {h != h0};
    comm_.sum(differ, 1, "the comparison of the processes' weights");
    INCRES_CHECK(differ[0] == 0, differ[0], " process(es) hold other weights than rank 0 after step ", step_,
                 ": the data-parallel processes diverged");
  }

  // Where metrics rows fall; a row whose span starts elsewhere (a resume mid-epoch) is
  // marked partial.
  bool log_point(int64_t s) const {
    return s % ipe_ == 0 || s == total_ || (cfg_.eval_every > 0 && s % cfg_.eval_every == 0);
  }
  // Where a span stops: a log point, or stop_after (an interruption asked for).
  bool span_end(int64_t s) const { return s == cfg_.stop_after || (cfg_.eval_every > 0 && s % cfg_.eval_every == 0); }

  // The run record the checkpoints carry, as resolved, so that `incres eval` rebuilds
  // the same model.
  void record() {
    cs_.seed = cfg_.seed;
    cs_.model = cfg_.model;
    RunRecord r;
    r.config = cfg_;
    r.config.shortcut = mc_.shortcut == models::Shortcut::A ? "A" : mc_.shortcut == models::Shortcut::B ? "B" : "C";
    r.config.image = mc_.image;
    r.in_channels = data_.in_channels;
    r.classes = data_.classes;
    r.mean = data_.mean;
    r.std = data_.std;
    r.class_names = data_.class_names;
    cs_.config = to_json(r).dump();
  }

  // Continues from cfg.resume after checking that it is this run.
  void restore() {
    CheckpointState s = load_checkpoint(cfg_.resume, g_, store_, opt_.get(), ema_.get());
    INCRES_CHECK(s.model.empty() || s.model == cfg_.model, cfg_.resume, " holds a ", s.model, " checkpoint, not ",
                 cfg_.model);
    INCRES_CHECK(s.seed == cfg_.seed, cfg_.resume, " was trained with --seed ", s.seed, "; resume with the same seed (got ",
                 cfg_.seed, ")");
    INCRES_CHECK(s.has_ema == (ema_ != nullptr), cfg_.resume,
                 s.has_ema ? " holds a moving average of the weights but this run keeps none; resume with the "
                             "original run's --ema DECAY"
                           : " holds no moving average of the weights but this run keeps one (--ema "
                             + std::to_string(cfg_.ema_decay) + "); resume without --ema (--ema 0)");
    std::string given = cs_.config;
    // With global BatchNorm statistics the run does not depend on the number of
    // processes (the global batch, its order, its augmentation and dropout do not), so
    // any number resumes it.
    if (cfg_.sync_bn) {
      nlohmann::json g = nlohmann::json::parse(given), r = nlohmann::json::parse(s.config, nullptr, false);
      if (r.is_object() && r.value("sync_bn", false) && r.contains("ranks")) g["ranks"] = r["ranks"];
      given = g.dump();
    }
    const std::string changed = resume_differences(s.config, given);
    if (!changed.empty()) {
      INCRES_CHECK(cfg_.force_resume, cfg_.resume,
                   " was trained with other settings, so the resumed run would not be the run it continues: ", changed,
                   ". Resume with the recorded values, or give --force-resume to continue with these");
      log_warn(cat("--force-resume: continuing ", cfg_.resume, " with changed settings: ", changed));
    }
    step_ = s.step;
    train_seconds_ = s.train_seconds;
    good_checkpoint_ = cfg_.resume;
    if (step_ >= total_) {
      log_info(cat(cfg_.resume, " is a finished run (step ", step_, " of ", total_, "); nothing to do"));
      result_.steps = step_;
      result_.already_finished = true;
      return;
    }
    log_info(cat("resuming ", cfg_.model, " from ", cfg_.resume, " at step ", step_, " (epoch ", step_ / ipe_, ")"));
  }

  void compile() {
    const std::string bad = first_non_finite(g_, store_);
    INCRES_CHECK(bad.empty(), "refusing to train: parameter ", bad, " holds NaN or Inf");
    // Dropout masks follow the run's seed, keyed by step: a resumed run drops what the
    // straight one did.
    backend::Options hooks;
    if (comm_.size() > 1) {
      hooks.grad_ready = [this](int p) { exchange_->ready(exchange_index_[p]); };
      hooks.sample_offset = comm_.rank() * local_batch_;
      if (cfg_.sync_bn)
        hooks.sum_across = [this](double* x, int64_t n) { comm_.sum(x, n, "the sum of BatchNorm statistics"); };
    }
    program_ = compile_checked(cfg_, g_, store_, local_batch_, hooks);
    program_->set_step(step_);
    if (comm_.size() > 1) {
      // The gradient buckets follow the order backward finishes the gradients in.
      std::vector<std::span<float>> buffers;
      exchange_index_.assign(g_.params.size(), -1);
      for (int p : program_->grad_order()) {
        exchange_index_[p] = static_cast<int>(buffers.size());
        buffers.emplace_back(store_.grads[p].data<float>(), static_cast<size_t>(store_.grads[p].numel()));
      }
      exchange_ = std::make_unique<dist::GradientExchange>(comm_, std::move(buffers));
      log_info(cat("data-parallel over ", comm_.size(), " processes (", comm_.describe(), "): ", local_batch_,
                   " images each per step, gradients in ", exchange_->buckets(), " bucket",
                   exchange_->buckets() > 1 ? "s" : "", " of ", exchange_->bytes() / 1e6, " MB in all",
                   cfg_.sync_bn ? ", BatchNorm statistics over the global batch" : ", BatchNorm statistics per process"));
    }
    // With a moving average, evaluation runs on it (Inception-v3, Sec. 8); the average's
    // tensors are updated in place, so this program always sees the current one.
    evaluator_ = backend::compile(cfg_.backend, g_, ema_ ? ema_->averages() : store_,
                                  {.batch = local_batch_, .mode = backend::Mode::infer,
                                   .precision = backend::parse_precision(cfg_.precision)});
  }

  void open_log() {
    if (!cfg_.out_dir.empty()) ckpt_ = RunFolder::checkpoint_in(cfg_.out_dir);  // rollbacks read it on every rank
    if (!folder_) return;
    // Rows past the checkpoint's step (a kill between a row and its checkpoint) are
    // dropped: the resumed run writes them again. A new run replaces the log only once
    // its first checkpoint is durable.
    if (step_ > 0) {
      const int64_t dropped = drop_metrics_after(folder_->metrics(), step_);
      if (dropped > 0)
        log_info(cat("dropped ", dropped, " metrics row", dropped > 1 ? "s" : "", " past step ", step_, " from ",
                     folder_->metrics(), " (written after the checkpoint it resumes)"));
      metrics_ = std::make_unique<MetricsLog>(folder_->metrics(), true);
    } else {
      metrics_ = std::make_unique<MetricsLog>(MetricsLog::replacing_at_commit(folder_->metrics()));
    }
  }

  // Trains from step_ to the next span end, the end of the epoch or of the run.
  Span run_span() {
    Span sp;
    sp.start = step_;
    const int64_t epoch = step_ / ipe_;
    data_.train->start_epoch(epoch, step_ % ipe_);
    Progress bar(cat("epoch ", epoch + 1, "/", (total_ + ipe_ - 1) / ipe_), ipe_,
                 cfg_.progress && comm_.rank() == 0 && stderr_is_terminal());
    const double exposed0 = exchange_ ? exchange_->exposed_seconds() : 0;
    auto t0 = std::chrono::steady_clock::now();
    // The progress text, built only when the bar redraws (it allocates).
    auto progress_text = [&] {
      return cat("loss ", sp.loss_sum / sp.seen, "  err ", 100.0 * (1 - double(sp.correct) / sp.seen), "%  ",
                 static_cast<int64_t>(sp.seen / seconds_since(t0)), " img/s");
    };
    sp.lr = schedule_->lr(step_);
    int64_t done = 0;  // batches of this epoch finished, for the bar
    while (step_ < total_) {
      const data::Batch* b = data_.train->next();
      if (!b) break;
      sp.lr = schedule_->lr(step_);
      done = b->index + 1;
      if (skipped_.count(step_)) {  // its batch diverged before a rollback: not trained on
        ++step_;
        ++sp.skipped;
        program_->set_step(step_);  // dropout masks stay keyed by the step
        if (span_end(step_)) break;
        continue;
      }
      comm_.set_step(step_);
      program_->forward(b->images.data<float>());
      OutputLosses::Result l = losses_->backward(*program_, b->labels.data(), b->size);
      int64_t size = b->size;
      if (exchange_) {
        // Every process's gradients, averaged; then the step's figures of the global
        // batch, the same on every process (a non-finite loss anywhere stops them all).
        exchange_->finish();
        const double n = static_cast<double>(b->size);
        double figures[5] = {l.total * n, l.main.loss * n, l.aux * n, static_cast<double>(l.main.correct), n};
        comm_.sum(figures, 5, "the sum of the step's loss");
        size = static_cast<int64_t>(figures[4]);
        l.total = figures[0] / figures[4];
        l.main.loss = figures[1] / figures[4];
        l.aux = figures[2] / figures[4];
        l.main.correct = static_cast<int64_t>(figures[3]);
      }
      const double loss = step_ == nan_at_ ? std::nan("") : l.total;
      // Measured on every step (one pass over the gradients) for the metrics and to
      // stop on a non-finite gradient; scaled only when clipping is on. Weight decay
      // is added later, inside the optimizer, so it is neither measured nor clipped
      // (as torch.nn.utils.clip_grad_norm_ with the optimizer's weight_decay; TF-slim
      // clips the regularised loss's gradient, which differs by wd * w).
      const double norm = std::isfinite(loss) ? clip_grad_norm(g_, store_, cfg_.clip_norm) : 0;
      if (!std::isfinite(loss) || !std::isfinite(norm)) {
        non_finite(sp, loss, norm, epoch, b->index);
        break;
      }
      opt_->step(sp.lr);
      if (ema_) ema_->update(step_);
      ++step_;
      ++sp.steps;
      sp.loss_sum += l.main.loss * static_cast<double>(size);
      sp.aux_sum += l.aux * static_cast<double>(size);
      sp.correct += l.main.correct;
      sp.seen += size;
      sp.norm_sum += norm;
      sp.norm_max = std::max(sp.norm_max, norm);
      sp.clipped += cfg_.clip_norm > 0 && norm > cfg_.clip_norm;
      if (cfg_.progress && bar.due(done)) bar.update(done, progress_text());
      if (span_end(step_)) break;
    }
    if (sp.seen > 0) bar.finish(done, cfg_.progress ? progress_text() : std::string());
    else bar.finish();
    sp.seconds = seconds_since(t0);
    if (exchange_ && sp.steps > 0) sp.exposed = (exchange_->exposed_seconds() - exposed0) / static_cast<double>(sp.steps);
    return sp;
  }

  // A non-finite loss or gradient: marks the span for a rollback where one is allowed,
  // else stops the run with what to do.
  void non_finite(Span& sp, double loss, double norm, int64_t epoch, int64_t batch) {
    const std::string what = cat(std::isfinite(loss) ? "gradient norm is " : "loss is ", std::isfinite(loss) ? norm : loss,
                                 " at step ", step_, " (epoch ", epoch + 1, ", batch ", batch, ", lr ", sp.lr, ")");
    const bool can_roll_back = cfg_.on_nonfinite == "rollback" && !good_checkpoint_.empty();
    if (can_roll_back && rollbacks_ < cfg_.max_rollbacks) {
      sp.diverged = what;
      sp.bad_step = step_;
      return;
    }
    fail(what, "; stopping. Lower --lr", std::isfinite(loss) ? ", set --clip-norm" : "",
         can_roll_back ? cat(" (", rollbacks_, " rollbacks done: --max-rollbacks ", cfg_.max_rollbacks, ")") : "",
         good_checkpoint_.empty()
             ? (cfg_.on_nonfinite == "rollback" ? " (no checkpoint was written yet to roll back to)"
                                                : ", or give --on-nonfinite rollback")
             : cat(", resume from the last checkpoint ", good_checkpoint_,
                   cfg_.on_nonfinite == "rollback" ? "" : ", or give --on-nonfinite rollback"));
  }

  // Back to the last good checkpoint; the steps since are trained again, without the
  // batch that diverged.
  void roll_back(const Span& sp) {
    const CheckpointState back = load_checkpoint(good_checkpoint_, g_, store_, opt_.get(), ema_.get());
    skipped_.insert(sp.bad_step);
    ++rollbacks_;
    log_warn(cat(sp.diverged, ": rolled back to ", good_checkpoint_, " at step ", back.step, "; the batch of step ",
                 sp.bad_step, " will be skipped (rollback ", rollbacks_, " of at most ", cfg_.max_rollbacks, ")"));
    if (metrics_)
      metrics_->write({{"event", "rollback"}, {"rollback", rollbacks_}, {"nonfinite_at_step", sp.bad_step},
                       {"to_step", back.step}, {"what", sp.diverged}});
    step_ = back.step;
    program_->set_step(step_);
  }

  // The span's figures; at a log point the evaluation and a metrics row; the checkpoint.
  void end_span(const Span& sp) {
    result_.steps = step_;
    result_.train_loss = sp.seen ? sp.loss_sum / sp.seen : 0;
    result_.train_error = sp.seen ? 100.0 * (1 - double(sp.correct) / sp.seen) : 0;
    result_.grad_norm = sp.steps ? sp.norm_sum / static_cast<double>(sp.steps) : 0;
    result_.images_per_sec = sp.seen / sp.seconds;
    result_.rollbacks = rollbacks_;
    result_.ranks = comm_.size();
    result_.exchange_exposed = sp.exposed;
    train_seconds_ += sp.seconds;
    comm_.set_step(step_);
    if (comm_.size() > 1) share_state();
    if (log_point(step_)) log_row(sp);
    if (!ckpt_.empty()) {
      if (folder_) {
        cs_.step = step_;
        cs_.train_seconds = train_seconds_;
        save_checkpoint(ckpt_, g_, store_, opt_.get(), ema_.get(), cs_);
      }
      good_checkpoint_ = ckpt_;
      // The rows this checkpoint covers are now in the log for good (a new run's
      // first commit replaces an earlier run's log).
      if (metrics_) metrics_->commit();
    }
  }

  void log_row(const Span& sp) {
    result_.test = evaluate(*evaluator_, *data_.test, mc_.classes, comm_);
    result_.bad_images = data_.bad_images();
    const bool aux = losses_->num_aux() > 0 && cfg_.aux_weight > 0;
    log_info(cat("epoch ", (step_ + ipe_ - 1) / ipe_, "  step ", step_, "  lr ", sp.lr, "  train loss ",
                 result_.train_loss, " err ", result_.train_error, "%", aux && sp.seen ? cat(" aux loss ", sp.aux_sum / sp.seen) : "",
                 "  grad norm ", result_.grad_norm, "  test", ema_ ? " (ema)" : "", " loss ", result_.test.loss, " err ",
                 result_.test.error, "%  ", static_cast<int64_t>(result_.images_per_sec), " img/s",
                 exchange_ ? cat(" (exchange not hidden: ", 1e3 * sp.exposed, " ms/step)") : "",
                 result_.bad_images ? cat(", ", result_.bad_images, " bad images skipped") : ""));
    if (!metrics_) return;
    nlohmann::json row{{"epoch", (step_ + ipe_ - 1) / ipe_}, {"step", step_},
                       {"epochs_done", static_cast<double>(step_) / static_cast<double>(ipe_)}, {"lr", sp.lr},
                       {"train_loss", result_.train_loss}, {"train_error", result_.train_error},
                       {"grad_norm", result_.grad_norm}, {"grad_norm_max", sp.norm_max},
                       {"test_loss", result_.test.loss}, {"test_error", result_.test.error},
                       {"test_top5_error", result_.test.top5_error}, {"test_ece", result_.test.ece},
                       {"eval_weights", ema_ ? "ema" : "raw"}, {"images_per_sec", result_.images_per_sec},
                       {"train_seconds", train_seconds_}};
    if (exchange_) {
      row["ranks"] = comm_.size();
      row["exchange_exposed_seconds"] = sp.exposed;  // per step
    }
    // The training program keeps its probe intact through backward: this is the
    // span's last batch.
    if (pool_in_ >= 0 && sp.steps > 0) row["pool_input_zeros"] = program_->zero_fraction(pool_in_);
    // The train figures cover the steps since the span's start; after a resume
    // mid-span, fewer than a whole span.
    if (!log_point(sp.start)) {
      row["partial"] = true;
      row["from_step"] = sp.start;
    }
    if (sp.skipped > 0) row["skipped_steps"] = sp.skipped;
    if (cfg_.clip_norm > 0) row["clipped_steps"] = sp.clipped;
    if (cfg_.skip_bad) row["bad_images"] = result_.bad_images;  // of this epoch's steps
    if (aux) row["train_aux_loss"] = sp.seen ? sp.aux_sum / sp.seen : 0;
    metrics_->write(row);
  }

  dist::Communicator& comm_;
  const TrainConfig cfg_;     // as resolved for the processes (ranks)
  const int64_t local_batch_;  // this process's share of the global batch
  std::unique_ptr<RunFolder> folder_;
  DataSource data_;
  models::ModelConfig mc_;
  graph::Graph g_;
  graph::ParamStore store_;
  int64_t ipe_ = 0, total_ = 0, step_ = 0;
  double train_seconds_ = 0;  // spent in training steps, over every session of the run (not evaluating)
  const int pool_in_ = pool_input(g_);
  std::optional<Schedule> schedule_;  // set once the data gives the epoch's length
  std::unique_ptr<Optimizer> opt_;
  std::unique_ptr<Ema> ema_;
  CheckpointState cs_;
  std::unique_ptr<backend::Program> program_, evaluator_;
  std::unique_ptr<MetricsLog> metrics_;
  std::string ckpt_;
  std::unique_ptr<OutputLosses> losses_;
  std::unique_ptr<dist::GradientExchange> exchange_;  // data-parallel only
  std::vector<int> exchange_index_;                    // per param: its buffer in exchange_
  TrainResult result_;
  // Divergence: the checkpoint a rollback returns to (this run's last one, or the one
  // it resumed from), the steps whose batches are skipped after one, and the count.
  std::string good_checkpoint_;
  std::set<int64_t> skipped_;
  int rollbacks_ = 0;
  const int64_t nan_at_ = test_nan_step();
};

}  // namespace

TrainResult run_training(const TrainConfig& cfg) {
  check_config(cfg);
  Run run(cfg);
  return run.train();
}

}  // namespace incres::train
