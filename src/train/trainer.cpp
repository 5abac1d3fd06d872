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
#include <tuple>
#include <type_traits>

#include "core/error.h"
#include "core/log.h"
#include "io/safetensors.h"
#include "models/models.h"
#include "train/checkpoint.h"
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
          {"eval_every", c.eval_every}, {"backend", c.backend}};
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

EvalResult evaluate(backend::Program& program, data::BatchSource& loader, int64_t classes) {
  EvalResult r;
  double loss_sum = 0;
  int64_t correct = 0, correct5 = 0;
  std::unique_ptr<backend::Loss> loss;  // the program's backend's, planned for the largest batch so far
  int64_t planned = 0;
  loader.start_epoch(0);
  while (const data::Batch* b = loader.next()) {
    program.forward(b->images.data<float>());
    const float* logits = program.output();
    if (b->size > planned) loss = backend::compile_loss(program.backend_name(), planned = b->size, classes, 0.f);
    const LossResult l = loss->run(logits, b->labels.data(), b->size, nullptr);
    loss_sum += l.loss * static_cast<double>(b->size);
    correct += l.correct;
    // With fewer than 5 classes every label is in the top K: top-5 error is 0.
    correct5 += topk_correct(logits, b->labels.data(), b->size, classes,
                             static_cast<int>(std::min<int64_t>(5, classes)));
    r.count += b->size;
  }
  INCRES_CHECK(r.count > 0, "evaluation set is empty");
  r.loss = loss_sum / static_cast<double>(r.count);
  r.error = 100.0 * (1.0 - static_cast<double>(correct) / static_cast<double>(r.count));
  r.top5_error = 100.0 * (1.0 - static_cast<double>(correct5) / static_cast<double>(r.count));
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
// more often). Keys a checkpoint does not record (written by an older incres) pass.
std::string resume_differences(const std::string& recorded_text, const std::string& given_text) {
  const nlohmann::json recorded = nlohmann::json::parse(recorded_text, nullptr, false);
  const nlohmann::json given = nlohmann::json::parse(given_text, nullptr, false);
  if (!recorded.is_object() || !given.is_object()) return "";
  const std::map<std::string, std::string> flags = {
      {"ema_decay", "--ema"}, {"aux", "--no-aux"}, {"augment", "--no-augment"},
      {"model_options", "the architecture options"}};
  std::string out;
  for (auto it = given.begin(); it != given.end(); ++it) {
    if (it.key() == "eval_every" || !recorded.contains(it.key()) || recorded[it.key()] == it.value()) continue;
    std::string flag = "--" + it.key();
    std::replace(flag.begin(), flag.end(), '_', '-');
    if (auto f = flags.find(it.key()); f != flags.end()) flag = f->second;
    out += cat(out.empty() ? "" : "; ", flag, " ", recorded[it.key()].dump(), " -> ", it.value().dump());
  }
  return out;
}

// The training program, or, where the machine lacks the memory for it, an Error with
// both figures and the largest batch that fits: the plan grows linearly with the
// batch, so two small compiles give its slope.
std::unique_ptr<backend::Program> compile_checked(const TrainConfig& cfg, const graph::Graph& g,
                                                  graph::ParamStore& store) {
  auto compile = [&](int64_t batch) {
    return backend::compile(cfg.backend, g, store, {.batch = batch, .mode = backend::Mode::train, .seed = cfg.seed});
  };
  try {
    return compile(cfg.batch);
  } catch (const backend::OutOfMemory& e) {
    std::string fits;
    if (cfg.batch > 2) {
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

TrainResult run_training(const TrainConfig& cfg) {
  check_config(cfg);
  // The output folder first: a bad --out or a folder in use fails before any work.
  std::optional<RunFolder> run_folder;
  if (!cfg.out_dir.empty()) run_folder.emplace(cfg.out_dir);

  // The data: an in-memory dataset through data::Loader, or an image folder decoded
  // on the fly by data::ImageFolderLoader; the loop sees a data::BatchSource.
  const bool folder = is_image_folder(cfg.data);
  DataPair data;
  data::ImageFolder train_folder, val_folder;
  int64_t in_channels = 3, classes = 0, train_count = 0;
  std::string source;
  std::vector<std::string> class_names;
  if (folder) {
    train_folder = scan_split(cfg.data, "train");
    val_folder = scan_split(cfg.data, "val", train_folder.classes);
    train_folder = limit_files(train_folder, cfg.train_limit);
    val_folder = limit_files(val_folder, cfg.test_limit);
    classes = static_cast<int64_t>(train_folder.classes.size());
    train_count = train_folder.count();
    source = train_folder.root;
    class_names = train_folder.class_names;
  } else {
    data = load_data(cfg.data);
    in_channels = data.train.channels;
    classes = data.train.classes;
    class_names = data.train.class_names;
  }
  const models::ModelConfig mc = model_config(cfg.model, cfg.shortcut, cfg.image, cfg.aux, in_channels, classes,
                                              cfg.model_options);
  const int64_t image = mc.image;
  std::unique_ptr<data::BatchSource> train_loader, test_loader;
  data::ImageFolderLoader *train_images = nullptr, *val_images = nullptr;  // for their bad-file counts
  std::vector<float> mean = data::kImageNetMean, std = data::kImageNetStd;
  if (folder) {
    INCRES_CHECK(train_count >= cfg.batch, "the training set has ", train_count, " images, fewer than one batch of ",
                 cfg.batch);
    auto tl = std::make_unique<data::ImageFolderLoader>(
        train_folder, image_loader_options(cfg.recipe, image, cfg.batch, true, cfg.augment, cfg.seed, cfg.workers,
                                           cfg.skip_bad));
    auto vl = std::make_unique<data::ImageFolderLoader>(
        val_folder, image_loader_options(cfg.recipe, image, cfg.batch, false, false, cfg.seed, cfg.workers,
                                         cfg.skip_bad));
    train_images = tl.get();
    val_images = vl.get();
    train_loader = std::move(tl);
    test_loader = std::move(vl);
  } else {
    FittedData fitted = fit_data(std::move(data), image, cfg.train_limit, cfg.test_limit);
    data::LoaderOptions train_opts = loader_options(fitted, image, cfg.batch, true, cfg.augment, cfg.seed, cfg.workers);
    data::LoaderOptions test_opts = loader_options(fitted, image, cfg.batch, false, false, cfg.seed, cfg.workers);
    mean = fitted.mean;
    std = fitted.std;
    data.train = std::move(fitted.train);
    data.test = std::move(fitted.test);
    INCRES_CHECK(data.train.count >= cfg.batch, "the training set has ", data.train.count,
                 " images, fewer than one batch of ", cfg.batch);
    train_count = data.train.count;
    source = data.train.source;
    train_loader = std::make_unique<data::Loader>(data.train, train_opts);
    test_loader = std::make_unique<data::Loader>(data.test, test_opts);
  }
  auto bad_images = [&] {
    return (train_images ? train_images->bad_count() : 0) + (val_images ? val_images->bad_count() : 0);
  };

  graph::Graph g = models::build_model(cfg.model, mc);
  graph::ParamStore store(g);
  store.init(g, cfg.seed);

  const int64_t ipe = train_loader->batches_per_epoch();
  const int64_t total = cfg.iters > 0 ? cfg.iters : cfg.epochs * ipe;
  Schedule schedule = make_schedule(cfg, ipe, total);

  std::unique_ptr<Optimizer> opt = make_optimizer(cfg, g, store);
  // The average starts at the initial weights; a resume overwrites it with the saved one.
  std::unique_ptr<Ema> ema = cfg.ema_decay > 0 ? std::make_unique<Ema>(g, store, cfg.ema_decay) : nullptr;
  std::unique_ptr<MetricsLog> metrics;
  std::string ckpt;
  CheckpointState cs;
  cs.seed = cfg.seed;
  cs.model = cfg.model;
  {
    // Recorded as resolved, so that `incres eval` rebuilds the same model.
    RunRecord record;
    record.config = cfg;
    record.config.shortcut = mc.shortcut == models::Shortcut::A ? "A" : mc.shortcut == models::Shortcut::B ? "B" : "C";
    record.config.image = mc.image;
    record.in_channels = in_channels;
    record.classes = classes;
    record.mean = mean;
    record.std = std;
    record.class_names = class_names;
    cs.config = to_json(record).dump();
  }
  int64_t step = 0;
  if (!cfg.resume.empty()) {
    CheckpointState s = load_checkpoint(cfg.resume, g, store, opt.get(), ema.get());
    INCRES_CHECK(s.model.empty() || s.model == cfg.model, cfg.resume, " holds a ", s.model,
                 " checkpoint, not ", cfg.model);
    INCRES_CHECK(s.seed == cfg.seed, cfg.resume, " was trained with --seed ", s.seed,
                 "; resume with the same seed (got ", cfg.seed, ")");
    INCRES_CHECK(s.has_ema == (ema != nullptr), cfg.resume,
                 s.has_ema ? " holds a moving average of the weights but this run keeps none; resume with the "
                             "original run's --ema DECAY"
                           : " holds no moving average of the weights but this run keeps one (--ema "
                             + std::to_string(cfg.ema_decay) + "); resume without --ema (--ema 0)");
    const std::string changed = resume_differences(s.config, cs.config);
    if (!changed.empty()) {
      INCRES_CHECK(cfg.force_resume, cfg.resume, " was trained with other settings, so the resumed run would not be the run it continues: ",
                   changed, ". Resume with the recorded values, or give --force-resume to continue with these");
      log_warn(cat("--force-resume: continuing ", cfg.resume, " with changed settings: ", changed));
    }
    step = s.step;
    if (step >= total) {
      log_info(cat(cfg.resume, " is a finished run (step ", step, " of ", total, "); nothing to do"));
      TrainResult done;
      done.steps = step;
      done.already_finished = true;
      done.params = g.param_count();
      done.macs = g.macs();
      return done;
    }
    log_info(cat("resuming ", cfg.model, " from ", cfg.resume, " at step ", step, " (epoch ", step / ipe, ")"));
  }
  std::string bad = first_non_finite(g, store);
  INCRES_CHECK(bad.empty(), "refusing to train: parameter ", bad, " holds NaN or Inf");

  // Dropout masks follow the run's seed.
  auto program = compile_checked(cfg, g, store);
  // Dropout masks are keyed by step: a resumed run drops what the straight one did.
  program->set_step(step);
  // With a moving average, evaluation runs on it (Inception-v3, Sec. 8); the average's
  // tensors are updated in place, so this program always sees the current one.
  auto evaluator = backend::compile(cfg.backend, g, ema ? ema->averages() : store,
                                    {.batch = cfg.batch, .mode = backend::Mode::infer});

  if (run_folder) {
    // Rows past the checkpoint's step (a kill between a row and its checkpoint) are
    // dropped: the resumed run writes them again. A new run replaces the log only once
    // its first checkpoint is durable.
    if (step > 0) {
      const int64_t dropped = drop_metrics_after(run_folder->metrics(), step);
      if (dropped > 0) log_info(cat("dropped ", dropped, " metrics row", dropped > 1 ? "s" : "", " past step ", step,
                                    " from ", run_folder->metrics(), " (written after the checkpoint it resumes)"));
      metrics = std::make_unique<MetricsLog>(run_folder->metrics(), true);
    } else {
      metrics = std::make_unique<MetricsLog>(MetricsLog::replacing_at_commit(run_folder->metrics()));
    }
    ckpt = run_folder->checkpoint();
  }
  log_info(cat("training ", cfg.model, " (", g.param_count(), " params, ", g.macs() / 1e6, " MMACs) on ",
               source, ": ", train_count, " images, ", ipe, " steps/epoch, ", total,
               " steps, batch ", cfg.batch, ", ", opt->name(), cfg.clip_norm > 0 ? cat(", clip ", cfg.clip_norm) : "",
               ema ? cat(", ema ", cfg.ema_decay) : "", ", backend ", program->backend_name()));

  const int64_t K = mc.classes;
  OutputLosses losses(g, cfg.batch, K, cfg.label_smoothing, cfg.aux_weight, cfg.backend);
  TrainResult result;
  result.params = g.param_count();
  result.macs = g.macs();
  const bool terminal = cfg.progress && stderr_is_terminal();
  // Where metrics rows fall; a row whose span starts elsewhere (a resume mid-epoch) is
  // marked partial.
  auto log_point = [&](int64_t s) {
    return s % ipe == 0 || s == total || (cfg.eval_every > 0 && s % cfg.eval_every == 0);
  };
  // Divergence: the checkpoint a rollback returns to (this run's last one, or the one
  // it resumed from), the steps whose batches are skipped after one, and the count.
  std::string good_checkpoint = cfg.resume;
  std::set<int64_t> skipped;
  int rollbacks = 0;
  const int64_t nan_at = test_nan_step();
  while (step < total) {
    const int64_t epoch = step / ipe, span_start = step;
    train_loader->start_epoch(epoch, step % ipe);
    Progress bar(cat("epoch ", epoch + 1, "/", (total + ipe - 1) / ipe), ipe, terminal);
    double loss_sum = 0, aux_sum = 0, norm_sum = 0, norm_max = 0;
    int64_t correct = 0, seen = 0, steps = 0, clipped = 0, skipped_here = 0;
    auto t0 = std::chrono::steady_clock::now();
    // The progress text, built only when the bar redraws (it allocates).
    auto progress_text = [&] {
      return cat("loss ", loss_sum / seen, "  err ", 100.0 * (1 - double(correct) / seen), "%  ",
                 static_cast<int64_t>(seen / seconds_since(t0)), " img/s");
    };
    double lr = schedule.lr(step);
    int64_t done = 0;  // batches of this epoch finished, for the bar
    std::string diverged;  // what went non-finite, when a rollback follows
    int64_t bad_step = -1;
    while (step < total) {
      const data::Batch* b = train_loader->next();
      if (!b) break;
      lr = schedule.lr(step);
      done = b->index + 1;
      if (skipped.count(step)) {  // its batch diverged before a rollback: not trained on
        ++step;
        ++skipped_here;
        if (step == cfg.stop_after || (cfg.eval_every > 0 && step % cfg.eval_every == 0)) break;
        continue;
      }
      program->forward(b->images.data<float>());
      const OutputLosses::Result l = losses.backward(*program, b->labels.data(), b->size);
      const double loss = step == nan_at ? std::nan("") : l.total;
      // Measured on every step (one pass over the gradients) for the metrics and to
      // stop on a non-finite gradient; scaled only when clipping is on. Weight decay
      // is added later, inside the optimizer, so it is neither measured nor clipped
      // (as torch.nn.utils.clip_grad_norm_ with the optimizer's weight_decay; TF-slim
      // clips the regularised loss's gradient, which differs by wd * w).
      const double norm = std::isfinite(loss) ? clip_grad_norm(g, store, cfg.clip_norm) : 0;
      if (!std::isfinite(loss) || !std::isfinite(norm)) {
        const std::string what = cat(std::isfinite(loss) ? "gradient norm is " : "loss is ",
                                     std::isfinite(loss) ? norm : loss, " at step ", step, " (epoch ", epoch + 1,
                                     ", batch ", b->index, ", lr ", lr, ")");
        const bool can_roll_back = cfg.on_nonfinite == "rollback" && !good_checkpoint.empty();
        if (can_roll_back && rollbacks < cfg.max_rollbacks) {
          diverged = what;
          bad_step = step;
          break;
        }
        fail(what, "; stopping. Lower --lr", std::isfinite(loss) ? ", set --clip-norm" : "",
             can_roll_back ? cat(" (", rollbacks, " rollbacks done: --max-rollbacks ", cfg.max_rollbacks, ")") : "",
             good_checkpoint.empty()
                 ? (cfg.on_nonfinite == "rollback" ? " (no checkpoint was written yet to roll back to)"
                                                   : ", or give --on-nonfinite rollback")
                 : cat(", resume from the last checkpoint ", good_checkpoint,
                       cfg.on_nonfinite == "rollback" ? "" : ", or give --on-nonfinite rollback"));
      }
      opt->step(lr);
      if (ema) ema->update(step);
      ++step;
      ++steps;
      loss_sum += l.main.loss * static_cast<double>(b->size);
      aux_sum += l.aux * static_cast<double>(b->size);
      correct += l.main.correct;
      seen += b->size;
      norm_sum += norm;
      norm_max = std::max(norm_max, norm);
      clipped += cfg.clip_norm > 0 && norm > cfg.clip_norm;
      if (cfg.progress && bar.due(done)) bar.update(done, progress_text());
      if (step == cfg.stop_after || (cfg.eval_every > 0 && step % cfg.eval_every == 0)) break;
    }
    if (seen > 0) bar.finish(done, cfg.progress ? progress_text() : std::string());
    else bar.finish();
    if (!diverged.empty()) {
      // Back to the last good checkpoint; the steps since are trained again, without
      // the batch that diverged.
      const CheckpointState back = load_checkpoint(good_checkpoint, g, store, opt.get(), ema.get());
      skipped.insert(bad_step);
      ++rollbacks;
      log_warn(cat(diverged, ": rolled back to ", good_checkpoint, " at step ", back.step, "; the batch of step ",
                   bad_step, " will be skipped (rollback ", rollbacks, " of at most ", cfg.max_rollbacks, ")"));
      if (metrics)
        metrics->write({{"event", "rollback"}, {"rollback", rollbacks}, {"nonfinite_at_step", bad_step},
                        {"to_step", back.step}, {"what", diverged}});
      step = back.step;
      program->set_step(step);
      continue;
    }
    const double secs = seconds_since(t0);
    result.steps = step;
    result.train_loss = seen ? loss_sum / seen : 0;
    result.train_error = seen ? 100.0 * (1 - double(correct) / seen) : 0;
    result.grad_norm = steps ? norm_sum / static_cast<double>(steps) : 0;
    result.images_per_sec = seen / secs;
    result.rollbacks = rollbacks;
    // Rows at the end of each epoch, of the run, and every eval_every steps.
    if (log_point(step)) {
      result.test = evaluate(*evaluator, *test_loader, K);
      result.bad_images = bad_images();
      log_info(cat("epoch ", (step + ipe - 1) / ipe, "  step ", step, "  lr ", lr, "  train loss ", result.train_loss,
                   " err ", result.train_error, "%", losses.num_aux() && cfg.aux_weight > 0 && seen ? cat(" aux loss ", aux_sum / seen) : "",
                   "  grad norm ", result.grad_norm, "  test", ema ? " (ema)" : "",
                   " loss ", result.test.loss, " err ", result.test.error, "%  ",
                   static_cast<int64_t>(result.images_per_sec), " img/s",
                   result.bad_images ? cat(", ", result.bad_images, " bad images skipped") : ""));
      if (metrics) {
        nlohmann::json row{{"epoch", (step + ipe - 1) / ipe}, {"step", step},
                           {"epochs_done", static_cast<double>(step) / static_cast<double>(ipe)}, {"lr", lr},
                           {"train_loss", result.train_loss}, {"train_error", result.train_error},
                           {"grad_norm", result.grad_norm}, {"grad_norm_max", norm_max},
                           {"test_loss", result.test.loss}, {"test_error", result.test.error},
                           {"test_top5_error", result.test.top5_error}, {"eval_weights", ema ? "ema" : "raw"},
                           {"images_per_sec", result.images_per_sec}};
        // The train figures cover the steps since span_start; after a resume
        // mid-span, fewer than a whole span.
        if (!log_point(span_start)) {
          row["partial"] = true;
          row["from_step"] = span_start;
        }
        if (skipped_here > 0) row["skipped_steps"] = skipped_here;
        if (cfg.clip_norm > 0) row["clipped_steps"] = clipped;
        if (cfg.skip_bad) row["bad_images"] = result.bad_images;  // of this epoch's steps
        if (losses.num_aux() > 0 && cfg.aux_weight > 0) row["train_aux_loss"] = seen ? aux_sum / seen : 0;
        metrics->write(row);
      }
    }
    if (!ckpt.empty()) {
      cs.step = step;
      save_checkpoint(ckpt, g, store, opt.get(), ema.get(), cs);
      good_checkpoint = ckpt;
      // The rows this checkpoint covers are now in the log for good (a new run's
      // first commit replaces an earlier run's log).
      if (metrics) metrics->commit();
    }
    if (step == cfg.stop_after) break;
  }
  return result;
}

}  // namespace incres::train
