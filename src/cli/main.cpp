// incres: the command-line front end. Thin: parse flags, call the library, print.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <optional>
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "backend/program.h"
#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/text.h"
#include "experiments/experiments.h"
#include "data/image.h"
#include "data/image_folder.h"
#include "io/model_params.h"
#include "io/safetensors.h"
#include "models/models.h"
#include "onnx/export.h"
#include "train/checkpoint.h"
#include "train/data_source.h"
#include "train/loaded_model.h"
#include "train/optimizer.h"
#include "train/plot.h"
#include "dist/communicator.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace incres;

namespace {

std::string human(double v) {
  char buf[32];
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2f G", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2f M", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1f K", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

// Number checks with short messages: CLI11's PositiveNumber and NonNegativeNumber
// print their upper bound (DBL_MAX) in full, 300 digits, and Range rounds [0, 1) up
// to "[0 - 1]".
CLI::Validator number_check(const char* what, bool (*ok)(double)) {
  return CLI::Validator(
      [what, ok](std::string& s) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(s, v) || !ok(v)) return "Value " + s + " is not " + what;
        return "";
      },
      what);
}
const CLI::Validator kPositive = number_check("> 0", [](double v) { return v > 0 && std::isfinite(v); });
const CLI::Validator kNonNegative = number_check(">= 0", [](double v) { return v >= 0 && std::isfinite(v); });
const CLI::Validator kUnitHalfOpen = number_check("in [0, 1)", [](double v) { return v >= 0 && v < 1; });

// The architecture options of models::arch_options(), as flags of every command that
// builds a model; a run records the ones given so `incres eval` rebuilds the same net.
struct ArchFlags {
  std::map<std::string, std::string> values;  // by option name (node-based: CLI11 binds to them)
  std::map<std::string, bool> flags;
  void add(CLI::App* c) {
    for (const models::ArchOption& o : models::arch_options()) {
      if (o.flag) c->add_flag("--" + o.name, flags[o.name], o.help);
      else c->add_option("--" + o.name, values[o.name], o.help);
    }
  }
  std::vector<std::pair<std::string, std::string>> options() const {
    std::vector<std::pair<std::string, std::string>> o;
    for (const models::ArchOption& a : models::arch_options()) {
      if (a.flag ? flags.at(a.name) : !values.at(a.name).empty()) o.emplace_back(a.name, a.flag ? "true" : values.at(a.name));
    }
    return o;
  }
};

// Flags shared by the commands that build a model; those not given keep the model's
// registry defaults (e.g. 299x299 and 1000 classes for inception_v3).
struct ModelFlags {
  ArchFlags arch;
  int64_t in_channels = 3, classes = 10, image = 32;
  std::string shortcut;
  bool no_aux = false;
  CLI::Option *in_channels_opt = nullptr, *classes_opt = nullptr, *image_opt = nullptr;
  void add(CLI::App* c) {
    in_channels_opt = c->add_option("--in-channels", in_channels, "input channels (1 for Fashion-MNIST; default: the model's)")
        ->check(CLI::Range(1, 4096));
    classes_opt = c->add_option("--classes", classes, "number of classes (default: the model's)")->check(CLI::Range(1, 1000000));
    image_opt = c->add_option("--image", image, "input height = width (default: the model's)")->check(CLI::Range(1, 4096));
    c->add_option("--shortcut", shortcut,
                  "ResNet shortcut where dimensions grow: A (zero-padded identity), B (1x1 projection) or C "
                  "(projection everywhere); default: the model's")
        ->check(CLI::IsMember({"A", "B", "C", "a", "b", "c"}));
    c->add_flag("--no-aux", no_aux, "Inception-v3 without its auxiliary classifier");
    arch.add(c);
  }
  // The first of these flags given on the command line, or "": for commands whose
  // checkpoint already records the architecture.
  static std::string first_given(const CLI::App* c) {
    for (const char* f : {"--in-channels", "--classes", "--image", "--shortcut", "--no-aux"})
      if (c->count(f)) return f;
    for (const models::ArchOption& o : models::arch_options())
      if (c->count("--" + o.name)) return "--" + o.name;
    return "";
  }
  models::ModelConfig config(const std::string& model) const {
    const models::ModelConfig d = models::find_model(model).defaults;
    return train::model_config(model, shortcut, image_opt->count() ? image : 0, !no_aux,
                               in_channels_opt->count() ? in_channels : d.in_channels,
                               classes_opt->count() ? classes : d.classes, arch.options());
  }
};

// --precision on the commands that run a model: fp32, or bf16 (inference; CPUs with
// AVX512-BF16 or AMX).
constexpr const char* kPrecisionHelp =
    "fp32, or bf16: feature maps and conv weights in bfloat16, accumulation, BN statistics and the classifier in fp32 "
    "(needs a CPU with AVX512-BF16 or AMX)";
inline CLI::Option* add_precision(CLI::App* app, std::string& precision) {
  return app->add_option("--precision", precision, kPrecisionHelp)->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
}

// Inference programs run stride-1 3x3, 1x3 / 3x1 and 1x7 / 7x1 convs as Winograd where
// it pays (backend/cpu/winograd.h); the flag that turns it off, in eval, predict and bench.
constexpr const char* kNoWinogradHelp =
    "run every convolution as oneDNN's direct conv (by default the 3x3, 1x3/3x1 and 1x7/7x1 convs with enough "
    "channels and output tiles run as incres's Winograd convolutions: faster, within ~3e-5 relative)";

// A subcommand: its flags (add() creates the CLI11 sub-app and binds them to the
// struct's members) and what it does (run(), after parsing).
struct Command {
  virtual ~Command() = default;
  virtual void add(CLI::App& parent) = 0;
  virtual int run() = 0;
  CLI::App* app = nullptr;
};

struct ModelsCommand : Command {
  void add(CLI::App& parent) override {
    app = parent.add_subcommand("models", "list every architecture with its parameters and MACs");
  }

  int run() override {
    std::printf("%-20s %12s %11s %9s  %s\n", "model", "params", "MACs", "input", "description");
    for (const auto& m : models::registry()) {
      graph::Graph g = m.build(m.defaults);
      const std::string input = std::to_string(m.defaults.image) + "x" + std::to_string(m.defaults.image);
      std::printf("%-20s %12s %11s %9s  %s\n", m.name.c_str(), with_commas(g.param_count()).c_str(),
                  human(static_cast<double>(g.macs())).c_str(), input.c_str(), m.description.c_str());
    }
    std::printf("\n(each at its default input, 3 channels, %s; `incres info MODEL --help` lists the options)\n",
                "10 classes for CIFAR nets, 1000 for ImageNet and Inception nets");
    return 0;
  }
};

double mb(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// The memory a compiled program plans, against what its tensors need.
void print_memory(const graph::Graph& g, const std::string& mode, int64_t batch, backend::Precision precision) {
  graph::ParamStore store(g);
  const bool train = mode == "train";
  auto p = backend::compile_cpu(g, store, {.batch = batch, .mode = train ? backend::Mode::train : backend::Mode::infer,
                                           .precision = precision});
  const backend::MemoryPlan m = p->memory_plan();
  int64_t param_bytes = 0;
  for (const auto& t : store.values) param_bytes += static_cast<int64_t>(t.nbytes());
  std::printf("\nmemory, %s, batch %lld, %s, cpu backend (MiB):\n", mode.c_str(), static_cast<long long>(batch),
              backend::precision_name(precision));
  std::printf("  %-52s %10.1f\n", "planned: activations, gradients, workspaces", mb(m.arena));
  std::printf("  %-52s %10.1f   (%.2fx of it)\n", "  most of these live at one step (no plan needs less)",
              mb(m.live_peak), static_cast<double>(m.arena) / static_cast<double>(std::max<int64_t>(m.live_peak, 1)));
  std::printf("  %-52s %10.1f   (one buffer each, %lld buffers)\n", "  without sharing by lifetime", mb(m.unplanned),
              static_cast<long long>(m.buffers));
  std::printf("  %-52s %10.1f\n", "scratchpad and temporaries, shared by all steps", mb(m.shared));
  std::printf("  %-52s %10.1f\n", train ? "parameters and their gradients" : "parameters", mb(param_bytes * (train ? 2 : 1)));
  std::printf("  %-52s %10.1f\n", "total (an optimizer adds its state)", mb(m.total + param_bytes * (train ? 2 : 1)));
}

struct InfoCommand : Command {
  std::string name;
  ModelFlags mf;
  bool memory = false;
  std::string mode = "train";
  int64_t batch = 32;
  std::string precision = "fp32";

  void add(CLI::App& parent) override {
    app = parent.add_subcommand("info", "per-layer table of a model: output shape, parameters, MACs; with --memory, its planned memory");
    app->add_option("model", name, "model name (see `incres models`)")->required();
    app->add_flag("--memory", memory, "also compile the model and report its planned memory");
    app->add_option("--mode", mode, "with --memory: train or infer")->capture_default_str()
        ->check(CLI::IsMember({"train", "infer"}));
    app->add_option("--batch", batch, "with --memory: batch size")->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{65536}));
    add_precision(app, precision)->description(std::string("with --memory: ") + kPrecisionHelp);
    mf.add(app);
  }

  int run() override {
    const backend::Precision prec = backend::parse_precision(precision);
    if (memory) backend::check_precision(prec);
    graph::Graph g = models::build_model(name, mf.config(name));
    std::printf("%-28s %-11s %-16s %12s %12s\n", "layer", "op", "output", "params", "MACs");
    for (const auto& n : g.nodes) {
      int64_t params = 0;
      for (int p : n.params)
        if (g.params[p].trainable()) params += g.params[p].shape.numel();
      std::printf("%-28s %-11s %-16s %12s %12s\n", n.name.c_str(), graph::op_name(n.op),
                  g.values[n.output].shape.str().c_str(), params ? with_commas(params).c_str() : "",
                  graph::node_macs(g, n) ? human(static_cast<double>(graph::node_macs(g, n))).c_str() : "");
    }
    std::printf("\n%s: input %s, %s parameters, %s MACs per image\n", name.c_str(), g.input_shape().str().c_str(),
                with_commas(g.param_count()).c_str(), human(static_cast<double>(g.macs())).c_str());
    if (memory) print_memory(g, mode, batch, prec);
    return 0;
  }
};

// Where a step's time goes: per node (summed over its primitives), most first, then
// per kind of primitive and phase.
void print_profile(const graph::Graph& g, const backend::Program& p, int calls, int64_t batch) {
  struct Row {
    std::string node, op, impl;
    double fwd = 0, bwd = 0, prep = 0;
  };
  std::map<std::string, int64_t> macs;  // per node name, per image
  for (const auto& n : g.nodes) macs[n.name] = graph::node_macs(g, n);
  std::vector<Row> rows;
  std::map<std::string, double> by_kind;
  double total = 0;
  for (const auto& s : p.steps()) {
    const std::string node = s.node.empty() ? "(input/output)" : s.node;
    auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.node == node; });
    if (it == rows.end()) it = rows.insert(rows.end(), Row{node, s.op.empty() ? "-" : s.op, ""});
    (s.phase == "forward" ? it->fwd : s.phase == "backward" ? it->bwd : it->prep) += s.seconds;
    if ((s.kind == std::string("convolution") || s.kind == std::string("winograd")) && it->impl.find(s.impl) == std::string::npos)
      it->impl += (it->impl.empty() ? "" : ",") + s.impl;
    by_kind[s.phase + " " + s.kind] += s.seconds;
    total += s.seconds;
  }
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.fwd + a.bwd > b.fwd + b.bwd; });
  const double per = 1e3 / std::max(calls, 1);
  std::printf("\nprofile, ms per iteration (%d timed iterations); GFLOP/s of the forward pass:\n"
              "%-34s %-11s %9s %9s %7s %8s  %s\n", calls, "node", "op", "forward", "backward", "share", "GFLOP/s",
              "conv implementation");
  for (size_t i = 0; i < rows.size() && i < 30; ++i) {
    const double flops = 2.0 * static_cast<double>(macs[rows[i].node]) * static_cast<double>(batch);
    const std::string rate = flops > 0 && rows[i].fwd > 0 ? std::to_string(static_cast<int>(flops / (rows[i].fwd * per / 1e3) / 1e9)) : "";
    std::printf("%-34s %-11s %9.2f %9.2f %6.1f%% %8s  %s\n", rows[i].node.c_str(), rows[i].op.c_str(), rows[i].fwd * per,
                rows[i].bwd * per, 100 * (rows[i].fwd + rows[i].bwd) / std::max(total, 1e-12), rate.c_str(),
                rows[i].impl.c_str());
  }
  if (rows.size() > 30) std::printf("... %zu more nodes\n", rows.size() - 30);
  std::printf("\nby primitive kind:\n");
  std::vector<std::pair<std::string, double>> kinds(by_kind.begin(), by_kind.end());
  std::stable_sort(kinds.begin(), kinds.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  for (const auto& [k, t] : kinds)
    if (t > 0) std::printf("  %-34s %9.2f ms %6.1f%%\n", k.c_str(), t * per, 100 * t / std::max(total, 1e-12));
}

struct BenchCommand : Command {
  std::string name, mode = "train", backend = "cpu";
  int64_t batch = 128;
  int iters = 20, warmup = 3;
  bool json = false;
  ModelFlags mf;
  bool profile = false;
  bool no_winograd = false;
  std::string precision = "fp32";

  void add(CLI::App& parent) override {
    app = parent.add_subcommand("bench", "time training steps or inference on synthetic data");
    app->add_option("model", name, "model name (see `incres models`)")->required();
    app->add_option("--mode", mode, "train (forward + backward) or infer")->capture_default_str()
        ->check(CLI::IsMember({"train", "infer"}));
    app->add_option("--batch", batch, "batch size")->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{65536}));
    app->add_option("--iters", iters, "timed iterations (the median is reported)")->capture_default_str()->check(CLI::Range(1, 100000));
    app->add_option("--warmup", warmup, "untimed iterations first")->capture_default_str()->check(CLI::Range(0, 100000));
    app->add_option("--backend", backend, "cpu or ref")->capture_default_str()->check(CLI::IsMember({"cpu", "ref"}));
    app->add_flag("--json", json, "print one JSON line");
    app->add_flag("--profile", profile, "time every step and print where the time goes, per layer and per primitive kind "
                  "(cpu backend; the clock reads add a little)");
    app->add_flag("--no-winograd", no_winograd, std::string("inference: ") + kNoWinogradHelp);
    add_precision(app, precision);
    mf.add(app);
  }

  int run() override {
    const bool winograd = !no_winograd;
    const backend::Precision prec = backend::parse_precision(precision);
    backend::check_precision(prec);
    graph::Graph g = models::build_model(name, mf.config(name));
    graph::ParamStore store(g);
    store.init(g, 0);
    const bool train = mode == "train";
    auto t_compile = std::chrono::steady_clock::now();
    auto program = backend::compile(backend, g, store, {.batch = batch, .mode = train ? backend::Mode::train : backend::Mode::infer,
                                                        .winograd = winograd, .precision = prec});
    double compile_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_compile).count();
    std::vector<float> x(static_cast<size_t>(batch * g.input_shape().numel()));
    std::vector<float> dy(static_cast<size_t>(batch * g.output_shape().numel()));
    Rng rng(1);
    for (float& v : x) v = static_cast<float>(rng.normal());
    for (float& v : dy) v = static_cast<float>(rng.normal() * 1e-3);
    // A training step as a training loop runs it: forward, backward, an SGD update
    // (momentum 0.9, weight decay 1e-4; the peers' benchmark scripts do the same).
    std::optional<train::Sgd> sgd;
    if (train) sgd.emplace(g, store, train::SgdOptions{});
    auto run = [&] {
      program->forward(x.data());
      if (!train) return;
      program->backward(dy.data());
      sgd->step(1e-3);
    };
    for (int i = 0; i < warmup; ++i) run();
    program->set_profiling(profile);
    std::vector<double> times;
    for (int i = 0; i < iters; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      run();
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    double median = times[times.size() / 2], mean = 0;
    for (double t : times) mean += t;
    mean /= static_cast<double>(times.size());
    // FLOPs: 2 per MAC; a training step costs forward + backward-data + backward-weights.
    double flops = 2.0 * static_cast<double>(g.macs()) * static_cast<double>(batch) * (train ? 3 : 1);
    double ips = static_cast<double>(batch) / median;
    if (json) {
      nlohmann::json j{{"model", name}, {"mode", mode}, {"batch", batch}, {"backend", backend},
                       {"images_per_sec", ips}, {"median_ms", median * 1e3}, {"mean_ms", mean * 1e3},
                       {"gflops", flops / median / 1e9}, {"iters", iters}, {"compile_s", compile_s},
                       {"planned_mb", static_cast<double>(program->planned_bytes()) / 1e6},
                       {"threads", omp_get_max_threads()}, {"isa", backend::cpu_isa()}, {"precision", precision}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s %s%s batch %lld (%s, %d threads, %s): %.1f images/s, %.2f ms/iter median (mean %.2f, %d iters), "
                  "%.1f GFLOP/s, compiled in %.2f s, %.1f MB planned\n",
                  name.c_str(), mode.c_str(), prec == backend::Precision::bf16 ? " bf16" : "", static_cast<long long>(batch),
                  backend.c_str(), omp_get_max_threads(),
                  backend.c_str() == std::string("cpu") ? backend::cpu_isa().c_str() : "naive loops", ips, median * 1e3,
                  mean * 1e3, iters, flops / median / 1e9, compile_s,
                  static_cast<double>(program->planned_bytes()) / 1e6);
    }
    if (profile) print_profile(g, *program, iters, batch);
    return 0;
  }
};

// A model with its weights: from a checkpoint of `incres train` (its recorded
// architecture; the moving average of the weights when it holds one, unless
// raw_weights) or from a weights file of parameters only (a converted torchvision
// state_dict; architecture from the flags). Both loads are strict: every missing,
// unexpected or wrong-shaped tensor is listed in one Error.
struct EvalCommand : Command {
  std::string path, data_spec, weights, model;
  int64_t batch = 256;
  int workers = 2;
  ModelFlags mf;
  bool skip_bad = false;
  bool raw_weights = false;
  bool no_winograd = false;
  std::string precision = "fp32";

  void add(CLI::App& parent) override {
    app = parent.add_subcommand("eval", "evaluate a checkpoint (or a weights file) on a test set: top-1 and top-5");
    app->add_option("checkpoint", path, "a .safetensors file written by `incres train`");
    app->add_option("--weights", weights, "instead of a checkpoint: parameters only (e.g. a torchvision state_dict "
                    "converted by tools/pth_to_safetensors.py), with --model and --data");
    app->add_option("--model", model, "with --weights: the architecture (see `incres models`)");
    app->add_option("--data", data_spec, "dataset (default: the one the checkpoint was trained on); imagefolder:DIR "
                    "evaluates DIR/val");
    app->add_flag("--skip-bad", skip_bad, "image folders: log, count and skip images that fail to decode");
    mf.add(app);
    app->add_option("--batch", batch, "images per batch")->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{65536}));
    app->add_option("--workers", workers, "data loader threads")->capture_default_str()->check(CLI::Range(0, 64));
    app->add_flag("--raw-weights", raw_weights,
                  "evaluate the trained weights even when the checkpoint holds a moving average of them (--ema)");
    app->add_flag("--no-winograd", no_winograd, kNoWinogradHelp);
    add_precision(app, precision);
  }

  int run() override {
    const CLI::App* ev = app;
    const bool winograd = !no_winograd;
    const backend::Precision prec = backend::parse_precision(precision);
    backend::check_precision(prec);
    train::LoadedModel m;
    if (!weights.empty()) {
      INCRES_CHECK(path.empty(), "give a checkpoint or --weights, not both");
      INCRES_CHECK(!model.empty(), "--weights ", weights, " holds parameters only: name the architecture with --model NAME");
      INCRES_CHECK(!data_spec.empty(), "--weights needs the data to evaluate on: --data imagefolder:DIR (DIR/val) or another dataset");
      INCRES_CHECK(!raw_weights, "--raw-weights applies to checkpoints with a moving average, not to --weights");
      m.name = model;
      m.mc = mf.config(model);
    } else {
      INCRES_CHECK(!path.empty(), "give a checkpoint written by `incres train`, or --weights FILE --model NAME");
      const std::string flag = ModelFlags::first_given(ev);
      INCRES_CHECK(flag.empty() && model.empty(), flag.empty() ? "--model" : flag, " applies to --weights; ", path,
                   " records its architecture");
    }
    train::RunRecord record;
    if (weights.empty()) {
      record = train::read_run_record(path);
      if (data_spec.empty()) data_spec = record.config.data;
    }
    INCRES_CHECK(!skip_bad || train::is_image_folder(data_spec), "--skip-bad applies to --data imagefolder:DIR, not ",
                 data_spec);
    // The test split (DIR/val of an image folder: CenterCrop at the model's input,
    // ImageNet's mean and std; in memory: the checkpoint's normalisation).
    train::DataSource d(data_spec, train::Splits::test);
    if (weights.empty()) {
      m.name = record.config.model;
      m.mc = train::model_config(record, d.in_channels, record.classes > 0 ? record.classes : d.classes);
    }
    d.check_model(m.mc);
    m.build();
    if (weights.empty()) m.load_checkpoint(path, raw_weights);
    else m.load_weights(weights);
    d.open(m.mc.image, {.batch = batch, .workers = workers, .skip_bad = skip_bad}, record.mean, record.std);
    auto program = backend::compile("cpu", *m.g, m.weights(), {.batch = batch, .mode = backend::Mode::infer,
                                                               .winograd = winograd, .precision = prec});
    train::EvalResult r = train::evaluate(*program, *d.test, m.mc.classes);
    std::printf("%s%s on %s: %lld images, loss %.4f, top-1 error %.2f%% (accuracy %.2f%%), top-5 error %.2f%%, "
                "calibration error (ECE, 15 bins) %.2f%%\n",
                m.name.c_str(), m.ema ? " (moving average of the weights)" : "", d.source.c_str(),
                static_cast<long long>(r.count), r.loss, r.error, 100 - r.error, r.top5_error, r.ece);
    if (d.bad_images() > 0)
      std::printf("skipped %lld bad images (--skip-bad)\n", static_cast<long long>(d.bad_images()));
    return 0;
  }
};

// The model of `predict` and `export`: a checkpoint (its recorded architecture; the
// architecture flags refused) or --weights with --model and those flags.
train::LoadedModel load_model(const CLI::App* app, const ModelFlags& mf, const std::string& checkpoint,
                              const std::string& weights, const std::string& model, bool raw_weights) {
  if (!weights.empty()) {
    INCRES_CHECK(!model.empty(), "--weights ", weights, " holds parameters only: name the architecture with --model NAME");
    INCRES_CHECK(!raw_weights, "--raw-weights applies to checkpoints, not to --weights");
    return train::load_weights_model(weights, model, mf.config(model));
  }
  const std::string flag = ModelFlags::first_given(app);
  INCRES_CHECK(flag.empty(), flag, " applies to --weights; ", checkpoint, " records its architecture");
  train::LoadedModel m = train::load_checkpoint_model(checkpoint, raw_weights);
  INCRES_CHECK(model.empty() || model == m.name, checkpoint, " holds a ", m.name, " checkpoint, not ", model);
  return m;
}

// `incres predict`: the top-k classes of each image, through the evaluation transform
// (as data::load_eval_image: CenterCrop at the model's input). Normalisation: a
// checkpoint's recorded one (ImageNet's for image folders), ImageNet's for --weights.
struct PredictCommand : Command {
  std::vector<std::string> images;
  std::string model, weights, checkpoint, labels;
  int top = 5;
  bool raw_weights = false;
  ModelFlags mf;
  bool no_winograd = false;
  std::string precision = "fp32";

  void add(CLI::App& parent) override {
    app = parent.add_subcommand("predict", "the top classes of images, with their probabilities");
    app->add_option("images", images, "JPEG or PNG files")->required();
    app->add_option("--model", model, "the architecture (see `incres models`); with --weights");
    app->add_option("--weights", weights, "parameters only, e.g. a torchvision state_dict converted by "
                    "tools/pth_to_safetensors.py; normalised with ImageNet's mean/std");
    app->add_option("--checkpoint", checkpoint, "a checkpoint written by `incres train` (its architecture, "
                    "normalisation and class names)");
    app->add_option("--labels", labels, "class names, one per line in class order (default: the checkpoint's "
                    "class folders, else the class index)");
    app->add_option("--top", top, "how many classes to print per image")->capture_default_str()->check(CLI::Range(1, 1000000));
    app->add_flag("--raw-weights", raw_weights, "with --checkpoint: the trained weights, not their moving average");
    app->add_flag("--no-winograd", no_winograd, kNoWinogradHelp);
    add_precision(app, precision);
    mf.add(app);
  }

  int run() override {
    const CLI::App* pr = app;
    const bool winograd = !no_winograd;
    const backend::Precision prec = backend::parse_precision(precision);
    backend::check_precision(prec);
    INCRES_CHECK(weights.empty() != checkpoint.empty(), "give one of --weights FILE (parameters only, e.g. a converted "
                 "torchvision state_dict) or --checkpoint FILE (written by `incres train`)");
    train::LoadedModel m = load_model(pr, mf, checkpoint, weights, model, raw_weights);
    INCRES_CHECK(m.mc.in_channels == 3, weights.empty() ? checkpoint : "--in-channels", ": the model takes ",
                 m.mc.in_channels, "-channel images; predict feeds RGB images to 3-channel models");
    const int64_t K = m.mc.classes;
    std::vector<std::string> names = m.class_names;
    if (!labels.empty()) names = data::read_labels_file(labels, static_cast<size_t>(K));
    if (static_cast<int64_t>(names.size()) != K) names.clear();
    auto program = backend::compile("cpu", *m.g, m.weights(), {.batch = 1, .mode = backend::Mode::infer,
                                                               .winograd = winograd, .precision = prec});
    int failed = 0;
    for (const std::string& path : images) {
      std::vector<float> x;
      try {
        x = data::load_eval_image(path, m.mc.image, m.mean, m.std, {}, m.crop_fraction);
      } catch (const Error& e) {  // names the file; the other images still get their answer
        std::fprintf(stderr, "incres: error: %s\n", e.what());
        ++failed;
        continue;
      }
      program->forward(x.data());
      std::printf("%s\n", path.c_str());
      int rank = 0;
      for (const auto& [c, p] : train::top_classes(program->output(), K, top)) {
        if (names.empty()) std::printf("  %d. %.4f  class %lld\n", ++rank, p, static_cast<long long>(c));
        else std::printf("  %d. %.4f  %s (class %lld)\n", ++rank, p, names[c].c_str(), static_cast<long long>(c));
      }
    }
    if (failed) {
      std::fprintf(stderr, "incres: error: %d of %zu images could not be read\n", failed, images.size());
      return 1;
    }
    return 0;
  }
};

// `incres export`: a checkpoint (or weights and a model name) as an ONNX model, in
// eval mode with the main head only. The model's metadata records what a caller must
// know to feed it: the input normalisation, the input size, the class names.
struct ExportCommand : Command {
  std::string checkpoint, weights, model, out;
  int opset = 13;
  int64_t batch = 0;
  bool fold_bn = false, raw_weights = false;
  ModelFlags mf;

  void add(CLI::App& parent) override {
    app = parent.add_subcommand("export", "write a model as ONNX (eval mode, main head), checked by ONNX's checker "
                                "and shape inference");
    app->add_option("checkpoint", checkpoint, "a .safetensors checkpoint written by `incres train`");
    app->add_option("--weights", weights, "instead of a checkpoint: parameters only (e.g. a torchvision state_dict "
                    "converted by tools/pth_to_safetensors.py), with --model");
    app->add_option("--model", model, "with --weights: the architecture (see `incres models`)");
    app->add_option("--onnx", out, "the .onnx file to write (replaced atomically)")->required();
    app->add_option("--opset", opset, "ONNX opset")->capture_default_str()->check(CLI::Range(13, 17));
    app->add_option("--batch", batch, "a fixed batch size; 0 = dynamic (the input's first dimension is named "
                    "batch_size)")->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
    app->add_flag("--fold-bn", fold_bn, "fold each BN that follows a conv into the conv's weights and bias "
                  "(default: BatchNormalization nodes)");
    app->add_flag("--raw-weights", raw_weights, "the trained weights even when the checkpoint holds a moving "
                  "average of them (--ema)");
    mf.add(app);
  }

  int run() override {
    const auto t0 = std::chrono::steady_clock::now();
    INCRES_CHECK(weights.empty() != checkpoint.empty(), "give a checkpoint written by `incres train`, or --weights "
                 "FILE --model NAME");
    train::LoadedModel m = load_model(app, mf, checkpoint, weights, model, raw_weights);
    auto list = [](const std::vector<float>& v) {
      std::string s;
      for (float x : v) s += (s.empty() ? "" : ",") + fixed(x, 6);
      return s;
    };
    onnx::ExportOptions o{.opset = opset, .batch = batch, .fold_bn = fold_bn, .model_name = m.name, .metadata = {}};
    o.metadata = {{"incres.model", m.name},
                  {"incres.image", std::to_string(m.mc.image)},
                  {"incres.classes", std::to_string(m.mc.classes)}};
    o.metadata.push_back({"incres.mean", list(m.mean)});
    o.metadata.push_back({"incres.std", list(m.std)});
    if (!m.class_names.empty()) o.metadata.push_back({"incres.class_names", nlohmann::json(m.class_names).dump()});
    onnx::export_file(out, *m.g, m.weights(), o);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("wrote %s: %s%s, %s parameters, opset %d, input \"%s\" [%s, %lld, %lld, %lld], output \"%s\", "
                "BN %s, %.2f MB in %.2f s\n",
                out.c_str(), m.name.c_str(), m.ema ? " (moving average of the weights)" : "",
                with_commas(m.g->param_count()).c_str(), opset, onnx::kInputName,
                batch ? std::to_string(batch).c_str() : onnx::kBatchName,
                static_cast<long long>(m.g->input_shape()[0]), static_cast<long long>(m.g->input_shape()[1]),
                static_cast<long long>(m.g->input_shape()[2]), onnx::kOutputName, fold_bn ? "folded" : "kept",
                static_cast<double>(fs::file_size(out)) / 1e6, secs);
    return 0;
  }
};

struct ExperimentCommand : Command {
  std::string name;
  experiments::Options o;
  bool dry_run = false;
  bool no_progress = false;

  void add(CLI::App& parent) override {
    app = parent.add_subcommand("experiment",
                                "reproduce a finding of the papers: train every run it needs (resumable: run it again to "
                                "continue), then write OUT/NAME/report.md, a table beside the paper's, and plot.png. "
                                "`incres experiment list` lists them");
    app->add_option("name", name, "experiment name, or `list`")->required();
    app->add_option("--out", o.out, "folder of the runs and reports: OUT/NAME/RUN-sSEED")->capture_default_str();
    app->add_option("--data", o.data, "as `incres train --data`: fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR")
        ->capture_default_str();
    app->add_flag("--full", o.full, "the paper's scale: 64k iterations, the whole data, the paper's depth");
    app->add_option("--seeds", o.seeds, "seeds per run (default: the experiment's)")->check(CLI::Range(1, 100));
    app->add_option("--iters", o.iters, "iterations per run (default: the experiment's budget; 64000 with --full)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
    app->add_option("--train-limit", o.train_limit, "train on the first N images (0 = all; default: the experiment's)")
        ->check(kNonNegative);
    app->add_option("--test-limit", o.test_limit, "test on the first N images (0 = all; default: the experiment's)")
        ->check(kNonNegative);
    app->add_option("--eval-every", o.eval_every, "evaluate every N iterations (default: the experiment's)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
    app->add_option("--stop-after", o.stop_after, "stop every run after this step, as if interrupted")
        ->check(kNonNegative);
    app->add_option("--workers", o.workers, "data loader threads")->capture_default_str()->check(CLI::Range(0, 64));
    app->add_flag("--report-only", o.report_only, "train nothing: write the report from the runs there are");
    app->add_flag("--dry-run", dry_run, "print the runs' `incres train` commands and stop");
    app->add_flag("--no-progress", no_progress, "no progress bar");
  }

  int run() override {
    o.progress = !no_progress;
    if (name == "list") {
      for (const experiments::Experiment& e : experiments::catalog()) {
        const experiments::Scale s = experiments::scale_of(e, o);
        std::printf("%-18s %s (%s); %zu runs x %d seed%s of %lld iterations\n", e.name.c_str(), e.title.c_str(),
                    e.paper.c_str(), e.runs(s).size(), o.seeds ? o.seeds : e.seeds, (o.seeds ? o.seeds : e.seeds) > 1 ? "s" : "",
                    static_cast<long long>(s.iters));
      }
      return 0;
    }
    const experiments::Experiment& e = experiments::find(name);
    if (dry_run) {
      for (const experiments::Run& r : e.runs(experiments::scale_of(e, o)))
        std::printf("%s\n", experiments::train_command(experiments::run_config(e, r, o, 0)).c_str());
      return 0;
    }
    std::printf("%s", experiments::run(e, o).c_str());
    return 0;
  }
};

struct TrainCommand : Command {
  train::TrainConfig tc;
  bool no_aux = false;
  ArchFlags arch;
  std::string recipe;
  bool no_augment = false;
  bool no_progress = false;

  void add(CLI::App& parent) override {
    app = parent.add_subcommand("train", "train a model; checkpoints and metrics go to --out");
    app->add_option("model", tc.model, "model name (see `incres models`)")->required();
    app->add_option("--data", tc.data, "fashion-mnist[:DIR] (Debian's dataset-fashion-mnist), cifar10:DIR, cifar100:DIR, "
                    "or imagefolder:DIR (DIR/train and DIR/val, one sub-folder per class, JPEG/PNG; ImageNet's layout; "
                    "the recipe's augmentation, ImageNet mean/std)")
        ->capture_default_str();
    app->add_flag("--skip-bad", tc.skip_bad, "image folders: log, count and skip images that fail to decode");
    app->add_option("--shortcut", tc.shortcut,
                    "ResNet shortcut where dimensions grow: A, B or C (default: the model's; A for CIFAR ResNets)")
        ->check(CLI::IsMember({"A", "B", "C", "a", "b", "c"}));
    app->add_option("--image", tc.image,
                    "input height = width; smaller images are zero-padded to it, and images under half of it are first resized to it - 8 (default: the model's; 32 for CIFAR nets, "
                    "299 for Inception, which takes 75 at the least)")
        ->check(CLI::Range(int64_t{1}, int64_t{4096}));
    app->add_flag("--no-aux", no_aux, "build Inception-v3 without its auxiliary classifier");
    arch.add(app);
    app->add_option("--epochs", tc.epochs, "length of the run in epochs")->check(CLI::Range(int64_t{1}, int64_t{1000000}));
    app->add_option("--iters", tc.iters, "length of the run in iterations (wins over --epochs)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
    app->add_option("--batch", tc.batch, "images per step; under mpirun the global batch, split evenly over the processes")
        ->capture_default_str()->check(CLI::Range(int64_t{1}, int64_t{65536}));
    app->add_option("--recipe", recipe,
                    "resnet | inception: the defaults of the flags below. resnet: SGD, lr 0.1 /10 at 50% and 75%, "
                    "weight decay 1e-4. inception (Inception-v3 paper, TF's RMSProp): --optimizer rmsprop --lr 0.045 "
                    "--schedule exp --decay-rate 0.94 --decay-epochs 2 --clip-norm 2 --label-smoothing 0.1 "
                    "--aux-weight 0.4 --ema 0.9999 --weight-decay 4e-5 --no-decay-bn-bias. Flags given explicitly "
                    "win. Default: inception for inception* models, resnet otherwise")
        ->check(CLI::IsMember({"resnet", "inception"}));
    app->add_option("--optimizer", tc.optimizer,
                    "sgd (PyTorch's SGD with momentum) | rmsprop (TensorFlow's RMSProp: epsilon inside the root, "
                    "mean square starting at 1, lr inside the momentum)")
        ->capture_default_str()->check(CLI::IsMember({"sgd", "rmsprop"}));
    app->add_option("--lr", tc.lr, "base learning rate")->capture_default_str()->check(kPositive);
    app->add_option("--schedule", tc.schedule,
                    "multistep | exp (lr x decay-rate every decay-epochs, staircase) | cosine | onecycle | constant")
        ->capture_default_str()->check(CLI::IsMember({"multistep", "exp", "cosine", "onecycle", "constant"}));
    app->add_option("--milestones", tc.milestones,
                    "multistep: where lr *= gamma, iterations (\"32000,48000\") or epochs (\"91e,136e\"); default 50% and 75% of the run");
    app->add_option("--gamma", tc.gamma, "multistep factor")->capture_default_str()->check(kPositive);
    app->add_option("--decay-rate", tc.decay_rate, "exp: the factor applied every --decay-epochs")
        ->capture_default_str()->check(kPositive);
    app->add_option("--decay-epochs", tc.decay_epochs, "exp: epochs between decays (may be fractional)")
        ->capture_default_str()->check(kPositive);
    app->add_option("--warmup-iters", tc.warmup_iters, "iterations of warm-up (the paper uses 400 at lr 0.01 for ResNet-110)")
        ->capture_default_str()->check(kNonNegative);
    app->add_option("--warmup-lr", tc.warmup_lr, "learning rate during warm-up")->capture_default_str()->check(kPositive);
    app->add_option("--warmup-kind", tc.warmup_kind, "constant | linear")->capture_default_str()
        ->check(CLI::IsMember({"constant", "linear"}));
    app->add_option("--momentum", tc.momentum, "momentum of SGD or RMSProp")->capture_default_str()->check(CLI::Range(0.0, 1.0));
    app->add_option("--weight-decay", tc.weight_decay, "L2 weight decay, added to the gradient")
        ->capture_default_str()->check(CLI::Range(0.0, 1.0));
    app->add_flag("--nesterov", tc.nesterov, "Nesterov momentum (sgd)");
    app->add_flag("--no-decay-bn-bias,!--decay-bn-bias", tc.no_decay_bn_bias,
                  "no weight decay on BN parameters and biases (--decay-bn-bias: decay them)");
    app->add_option("--rmsprop-decay", tc.rmsprop_decay, "rmsprop: decay of the mean square")
        ->capture_default_str()->check(kUnitHalfOpen);
    app->add_option("--rmsprop-epsilon", tc.rmsprop_epsilon, "rmsprop: epsilon, inside the square root")
        ->capture_default_str()->check(kPositive);
    app->add_option("--clip-norm", tc.clip_norm, "clip gradients to this global L2 norm over all parameters; 0 = off")
        ->capture_default_str()->check(kNonNegative);
    app->add_option("--ema", tc.ema_decay,
                    "keep a moving average of the weights with this decay (e.g. 0.9999) and evaluate on it; 0 = off")
        ->capture_default_str()->check(kUnitHalfOpen);
    app->add_option("--aux-weight", tc.aux_weight, "weight of the auxiliary classifier's loss (Inception-v3)")
        ->capture_default_str()->check(kNonNegative);
    app->add_option("--label-smoothing", tc.label_smoothing, "label smoothing epsilon (Inception-v3 uses 0.1)")
        ->capture_default_str()->check(CLI::Range(0.0, 0.999));
    app->add_flag("--no-augment", no_augment, "no random crop / flip");
    app->add_option("--seed", tc.seed, "seed of initialisation, data order and augmentation")->capture_default_str()
        ->check(kNonNegative);
    app->add_option("--workers", tc.workers, "data loader threads")->capture_default_str()->check(CLI::Range(0, 64));
    app->add_option("--train-limit", tc.train_limit, "use only N training images: the first N, or for an image folder N spread evenly over its classes")->check(kNonNegative);
    app->add_option("--test-limit", tc.test_limit, "use only N test images (as --train-limit)")->check(kNonNegative);
    app->add_option("--backend", tc.backend, "cpu (oneDNN) or ref (naive loops; slow)")->capture_default_str()
        ->check(CLI::IsMember({"cpu", "ref"}));
    app->add_option("--precision", tc.precision, "fp32, or bf16: feature maps and conv operands in bfloat16; master "
                    "weights, optimizer and moving-average state, BN statistics and the loss in fp32 (needs a CPU "
                    "with AVX512-BF16 or AMX)")->capture_default_str()->check(CLI::IsMember({"fp32", "bf16"}));
    app->add_option("--out", tc.out_dir, "folder for last.safetensors, metrics.jsonl and curve.png");
    app->add_option("--resume", tc.resume, "continue from this checkpoint (same flags as the original run)");
    app->add_option("--stop-after", tc.stop_after, "stop after this step, checkpointing, as if interrupted")
        ->check(kNonNegative);
    app->add_flag("--force-resume", tc.force_resume,
                  "resume even where the checkpoint records other settings (batch, data, recipe, architecture...): "
                  "each change is logged. Without it such a resume is refused, listing them");
    app->add_option("--on-nonfinite", tc.on_nonfinite,
                    "on a NaN or Inf loss or gradient: stop, or rollback (reload the last checkpoint, skip the batch that "
                    "diverged, go on; each rollback is logged)")->capture_default_str()
        ->check(CLI::IsMember({"stop", "rollback"}));
    app->add_option("--max-rollbacks", tc.max_rollbacks, "--on-nonfinite rollback: at most this many times")
        ->capture_default_str()->check(CLI::Range(0, 1000000));
    app->add_option("--eval-every", tc.eval_every,
                    "also evaluate, log a metrics row and checkpoint every N steps (default: at the end of each epoch)")
        ->check(kNonNegative);
    app->add_flag("--no-progress", no_progress, "no progress bar");
    app->add_flag("--sync-bn", tc.sync_bn,
                  "data-parallel (mpirun -np N incres train ...): BatchNorm statistics over the global batch, not each "
                  "process's share (PyTorch's SyncBatchNorm); fp32, cpu backend");
    app->add_option("--comm-timeout", tc.comm_timeout,
                    "data-parallel: seconds a collective may wait for the other processes before this one exits, "
                    "naming it and the step (a process died or hangs)")
        ->capture_default_str()->check(kPositive);
  }

  int run() override {
    tc.augment = !no_augment;
    tc.progress = !no_progress;
    tc.aux = !no_aux;
    tc.model_options = arch.options();
    // The recipe sets every field it governs that was not given explicitly.
    train::apply_recipe(tc, recipe.empty() ? train::default_recipe(tc.model) : recipe,
                        [&](const char* flag) { return app->count(flag) > 0; });
    // Flags that would be silently ignored are refused.
    if (tc.schedule != "exp")
      for (const char* f : {"--decay-rate", "--decay-epochs"})
        INCRES_CHECK(app->count(f) == 0, f, " applies to --schedule exp, not ", tc.schedule);
    if (tc.optimizer != "rmsprop")
      for (const char* f : {"--rmsprop-decay", "--rmsprop-epsilon"})
        INCRES_CHECK(app->count(f) == 0, f, " applies to --optimizer rmsprop, not ", tc.optimizer);
    INCRES_CHECK(tc.schedule == "multistep" || app->count("--gamma") == 0, "--gamma applies to --schedule multistep, not ",
                 tc.schedule);
    if (tc.warmup_iters == 0)
      for (const char* f : {"--warmup-lr", "--warmup-kind"})
        INCRES_CHECK(app->count(f) == 0, f, " applies with --warmup-iters N > 0");
    INCRES_CHECK(tc.on_nonfinite == "rollback" || app->count("--max-rollbacks") == 0,
                 "--max-rollbacks applies with --on-nonfinite rollback");
    if (app->count("--aux-weight")) models::check_option_applies(tc.model, "aux-weight");
    train::TrainResult r;
    // Data-parallel: rank 0 alone writes the plot and the summary.
    const bool lead = dist::world().rank() == 0;
    try {
      r = train::run_training(tc);
    } catch (const Error&) {
      // The curve of what the folder holds now (a run that fails after its first
      // checkpoint has replaced the earlier one's rows).
      if (!tc.out_dir.empty() && lead) train::plot_run(tc.out_dir);
      throw;
    }
    if (!lead) return 0;
    if (r.already_finished) {
      std::printf("%s: the run is finished (step %lld); nothing to do\n", tc.resume.c_str(),
                  static_cast<long long>(r.steps));
      return 0;
    }
    std::printf("%s: %lld steps, final train error %.2f%%, test error %.2f%% (accuracy %.2f%%), %.0f images/s\n",
                tc.model.c_str(), static_cast<long long>(r.steps), r.train_error, r.test.error, 100 - r.test.error,
                r.images_per_sec);
    if (r.bad_images > 0) std::printf("skipped %lld bad images (--skip-bad)\n", static_cast<long long>(r.bad_images));
    if (!tc.out_dir.empty()) train::plot_run(tc.out_dir);
    return 0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"incres: train, evaluate and run the ResNet and Inception networks of four papers, in C++"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "incres 0.1");

  ModelsCommand models_cmd;
  InfoCommand info_cmd;
  TrainCommand train_cmd;
  EvalCommand eval_cmd;
  PredictCommand predict_cmd;
  BenchCommand bench_cmd;
  ExportCommand export_cmd;
  ExperimentCommand experiment_cmd;
  Command* commands[] = {&models_cmd, &info_cmd,  &train_cmd,  &eval_cmd,
                         &predict_cmd, &bench_cmd, &export_cmd, &experiment_cmd};
  for (Command* c : commands) c->add(app);
  // Every command that computes takes --threads (oneDNN and our loops run on OpenMP).
  int threads = 0;
  for (Command* c : {static_cast<Command*>(&train_cmd), static_cast<Command*>(&eval_cmd),
                     static_cast<Command*>(&predict_cmd), static_cast<Command*>(&bench_cmd),
                     static_cast<Command*>(&experiment_cmd)})
    c->app->add_option("--threads", threads, "compute threads (default: OMP_NUM_THREADS if set, else every core)")
        ->check(CLI::Range(1, 4096));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (threads > 0) omp_set_num_threads(threads);

  try {
    for (Command* c : commands)
      if (c->app->parsed()) return c->run();
  } catch (const Error& e) {
    // Data-parallel: one process's error ends them all (the others would wait for it
    // until their --comm-timeout).
    if (dist::launched_by_mpi() && dist::built_with_mpi()) {
      dist::Communicator& w = dist::world();
      if (w.size() > 1) {
        std::fprintf(stderr, "incres: error: [rank %d] %s\n", w.rank(), e.what());
        w.abort(1);
      }
    }
    std::fprintf(stderr, "incres: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "incres: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
