#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>

#include "core/error.h"
#include "core/log.h"
#include "models/models.h"
#include "train/checkpoint.h"
#include "train/ema.h"
#include "train/loss.h"
#include "train/metrics.h"
#include "train/optimizer.h"
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
  for (const auto& [key, value] : options) models::set_option(mc, key, value);
  mc.in_channels = in_channels;
  mc.classes = classes;
  if (!shortcut.empty()) mc.shortcut = models::parse_shortcut(shortcut);
  if (image > 0) mc.image = image;
  mc.aux = mc.aux && aux;
  return mc;
}

data::Dataset fit_images(const data::Dataset& ds, int64_t image) {
  if (image < 2 * std::max(ds.height, ds.width)) return ds;
  return data::resized(ds, image - 8);
}

data::LoaderOptions loader_options(const data::Dataset& train_set, int64_t image, int64_t batch,
                                   bool training, bool augment, uint64_t seed, int workers) {
  data::LoaderOptions o;
  o.batch = batch;
  o.shuffle = training;
  o.drop_last = training;
  o.augment = training && augment;
  INCRES_CHECK(train_set.height <= image && train_set.width <= image, "images of ", train_set.height, "x",
               train_set.width, " do not fit the model's ", image, "x", image, " input");
  o.out_size = image;
  auto [mean, std] = data::channel_mean_std(train_set);
  o.mean = mean;
  o.std = std;
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
void check_config(const TrainConfig& cfg) {
  INCRES_CHECK(cfg.batch > 0, "--batch must be positive, got ", cfg.batch);
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
    const int64_t h = data.train.height, w = data.train.width;
    data.train = fit_images(data.train, image);
    data.test = fit_images(data.test, image);
    if (data.train.height != h)
      log_info(cat("resized the ", h, "x", w, " images to ", data.train.height, "x", data.train.width,
                   " (zero-padded to the model's ", image, "x", image, ")"));
    // Normalisation comes from the whole training set, also when training on a subset,
    // so that `incres eval` (which sees the whole set) normalises the same way.
    data::LoaderOptions train_opts = loader_options(data.train, image, cfg.batch, true, cfg.augment, cfg.seed, cfg.workers);
    data::LoaderOptions test_opts = loader_options(data.train, image, cfg.batch, false, false, cfg.seed, cfg.workers);
    mean = train_opts.mean;
    std = train_opts.std;
    if (cfg.train_limit > 0) data.train = data::subset(data.train, cfg.train_limit);
    if (cfg.test_limit > 0) data.test = data::subset(data.test, cfg.test_limit);
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
    step = s.step;
    log_info(cat("resuming ", cfg.model, " from ", cfg.resume, " at step ", step, " (epoch ", step / ipe, ")"));
  }
  std::string bad = first_non_finite(g, store);
  INCRES_CHECK(bad.empty(), "refusing to train: parameter ", bad, " holds NaN or Inf");

  // Dropout masks follow the run's seed.
  auto program = backend::compile(cfg.backend, g, store,
                                  {.batch = cfg.batch, .mode = backend::Mode::train, .seed = cfg.seed});
  // Dropout masks are keyed by step: a resumed run drops what the straight one did.
  program->set_step(step);
  // With a moving average, evaluation runs on it (Inception-v3, Sec. 8); the average's
  // tensors are updated in place, so this program always sees the current one.
  auto evaluator = backend::compile(cfg.backend, g, ema ? ema->averages() : store,
                                    {.batch = cfg.batch, .mode = backend::Mode::infer});

  std::unique_ptr<MetricsLog> metrics;
  std::string ckpt;
  CheckpointState cs;
  cs.seed = cfg.seed;
  cs.model = cfg.model;
  {
    // Recorded as resolved, so that `incres eval` rebuilds the same model.
    TrainConfig resolved = cfg;
    resolved.shortcut = mc.shortcut == models::Shortcut::A ? "A" : mc.shortcut == models::Shortcut::B ? "B" : "C";
    resolved.image = mc.image;
    nlohmann::json j = to_json(resolved);
    // What `incres predict` needs without the dataset: the input's channels, the
    // classes and their names, and the normalisation the run used.
    j["in_channels"] = in_channels;
    j["num_classes"] = classes;
    j["mean"] = mean;
    j["std"] = std;
    if (!class_names.empty()) j["class_names"] = class_names;
    cs.config = j.dump();
  }
  if (!cfg.out_dir.empty()) {
    fs::create_directories(cfg.out_dir);
    metrics = std::make_unique<MetricsLog>((fs::path(cfg.out_dir) / "metrics.jsonl").string(), step > 0);
    ckpt = (fs::path(cfg.out_dir) / "last.safetensors").string();
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
  while (step < total) {
    const int64_t epoch = step / ipe;
    train_loader->start_epoch(epoch, step % ipe);
    Progress bar(cat("epoch ", epoch + 1, "/", (total + ipe - 1) / ipe), ipe, terminal);
    double loss_sum = 0, aux_sum = 0, norm_sum = 0, norm_max = 0;
    int64_t correct = 0, seen = 0, steps = 0, clipped = 0;
    auto t0 = std::chrono::steady_clock::now();
    // The progress text, built only when the bar redraws (it allocates).
    auto progress_text = [&] {
      return cat("loss ", loss_sum / seen, "  err ", 100.0 * (1 - double(correct) / seen), "%  ",
                 static_cast<int64_t>(seen / seconds_since(t0)), " img/s");
    };
    double lr = schedule.lr(step);
    int64_t done = 0;  // batches of this epoch finished, for the bar
    while (step < total) {
      const data::Batch* b = train_loader->next();
      if (!b) break;
      lr = schedule.lr(step);
      program->forward(b->images.data<float>());
      const OutputLosses::Result l = losses.backward(*program, b->labels.data(), b->size);
      if (!std::isfinite(l.total))
        fail("loss is ", l.total, " at step ", step, " (epoch ", epoch + 1, ", batch ", b->index, ", lr ", lr,
             "); stopping. Lower --lr or resume from the last checkpoint", ckpt.empty() ? "" : " " + ckpt);
      // Measured on every step (one pass over the gradients) for the metrics and to
      // stop on a non-finite gradient; scaled only when clipping is on. Weight decay
      // is added later, inside the optimizer, so it is neither measured nor clipped
      // (as torch.nn.utils.clip_grad_norm_ with the optimizer's weight_decay; TF-slim
      // clips the regularised loss's gradient, which differs by wd * w).
      const double norm = clip_grad_norm(g, store, cfg.clip_norm);
      if (!std::isfinite(norm))
        fail("gradient norm is ", norm, " at step ", step, " (epoch ", epoch + 1, ", batch ", b->index, ", lr ", lr,
             "); stopping. Lower --lr, set --clip-norm, or resume from the last checkpoint",
             ckpt.empty() ? "" : " " + ckpt);
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
      done = b->index + 1;
      if (cfg.progress && bar.due(done)) bar.update(done, progress_text());
      if (step == cfg.stop_after || (cfg.eval_every > 0 && step % cfg.eval_every == 0)) break;
    }
    if (seen > 0) bar.finish(done, cfg.progress ? progress_text() : std::string());
    else bar.finish();
    const double secs = seconds_since(t0);
    result.steps = step;
    result.train_loss = seen ? loss_sum / seen : 0;
    result.train_error = seen ? 100.0 * (1 - double(correct) / seen) : 0;
    result.grad_norm = steps ? norm_sum / static_cast<double>(steps) : 0;
    result.images_per_sec = seen / secs;
    // Rows at the end of each epoch, of the run, and every eval_every steps.
    const bool log_point = step % ipe == 0 || step == total || (cfg.eval_every > 0 && step % cfg.eval_every == 0);
    if (log_point) {
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
        if (cfg.clip_norm > 0) row["clipped_steps"] = clipped;
        if (cfg.skip_bad) row["bad_images"] = result.bad_images;  // of this epoch's steps
        if (losses.num_aux() > 0 && cfg.aux_weight > 0) row["train_aux_loss"] = seen ? aux_sum / seen : 0;
        metrics->write(row);
      }
    }
    if (!ckpt.empty()) {
      cs.step = step;
      save_checkpoint(ckpt, g, store, opt.get(), ema.get(), cs);
    }
    if (step == cfg.stop_after) break;
  }
  return result;
}

}  // namespace incres::train
