// The experiments, one entry per finding of the papers (../PAPERS.md §1–2): the
// runs each compares, the paper's figures beside them, and the check of the finding.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/text.h"
#include "experiments/experiments.h"

namespace incres::experiments {

namespace {

// A CIFAR net under the ResNet recipe: SGD, momentum 0.9, weight decay 1e-4, lr 0.1
// divided by 10 at 50% and 75% of the run (32k and 48k of 64k in the paper).
Run cifar(std::string name, std::string label, std::string group, std::string paper, const std::string& model,
          std::vector<std::pair<std::string, std::string>> options = {}) {
  Run r;
  r.name = std::move(name);
  r.label = std::move(label);
  r.group = std::move(group);
  r.paper = std::move(paper);
  r.config.model = model;
  train::apply_recipe(r.config, "resnet");
  r.config.model_options = std::move(options);
  return r;
}

// The paper's warm-up for nets of 110 layers and more: lr 0.01 for 400 iterations of
// 64k; shorter runs warm up for the same share of the run.
void warm_up(Run& r, const Scale& s) {
  r.config.warmup_iters = s.full ? 400 : std::max<int64_t>(1, s.iters * 400 / 64000);
  r.config.warmup_lr = 0.01;
}

// An Inception net under the ResNet recipe, scaled to the budget: width 0.25 and a
// batch of `batch` at the default scale, the paper's width and batch 128 with --full.
Run inception(std::string name, std::string label, std::string group, std::string paper, const std::string& model,
              const Scale& s, int64_t batch) {
  Run r = cifar(std::move(name), std::move(label), std::move(group), std::move(paper), model,
                s.full ? std::vector<std::pair<std::string, std::string>>{}
                       : std::vector<std::pair<std::string, std::string>>{{"width", "0.25"}});
  r.config.batch = s.full ? 128 : batch;
  return r;
}

std::string pct(double v) { return fixed(v) + "%"; }

// The usual plot: training error (dashed) and test error against iterations.
std::vector<Panel> error_panels() {
  return {{"training error", "", {"train_error"}, "error (%)"}, {"test error", "", {"test_error"}, "error (%)"}};
}

// The run with the lowest (or highest) mean test error among those that trained; runs
// whose every seed diverged have no test error and are left out.
const Result& extreme(const std::map<std::string, Result>& r, bool lowest) {
  auto key = [&](const Result& x) {
    return x.seeds > 0 ? x.test_error : lowest ? INFINITY : -INFINITY;
  };
  auto cmp = [&](const auto& a, const auto& b) { return key(a.second) < key(b.second); };
  return (lowest ? std::min_element(r.begin(), r.end(), cmp) : std::max_element(r.begin(), r.end(), cmp))->second;
}

// The largest seed spread (max - min of test error) among the runs: differences
// below it are within the noise.
double noise(const std::map<std::string, Result>& r) {
  double n = 0;
  for (const auto& [name, x] : r) n = std::max(n, x.test_error_max - x.test_error_min);
  return n;
}

std::string points(double v) { return fixed(v) + " points"; }

std::string yes_no(bool ok, bool partly = false) { return ok ? "reproduced" : partly ? "partly reproduced" : "not reproduced"; }

Experiment degradation() {
  Experiment e;
  e.name = "degradation";
  e.title = "the degradation of deep plain nets";
  e.paper = "ResNet paper, Fig. 1 and 6, Table 6 (CIFAR-10)";
  e.paper_metric = "CIFAR-10 test error %";
  e.seeds = 1;
  e.iters = 2000;
  e.test_limit = 5000;
  e.eval_every = 200;
  e.runs = [](const Scale& s) {
    std::vector<Run> runs;
    const std::vector<int> depths = s.full ? std::vector<int>{20, 32, 44, 56} : std::vector<int>{20, 32, 56};
    const std::map<int, std::string> table6 = {{20, "8.75"}, {32, "7.51"}, {44, "7.17"}, {56, "6.97"}};
    for (int d : depths)
      runs.push_back(cifar(cat("plain", d), cat("plain-", d), "plain", d == 56 ? "Fig. 6: above plain-20" : "",
                           cat("plain", d)));
    for (int d : depths)
      runs.push_back(cifar(cat("resnet", d), cat("ResNet-", d), "residual", table6.at(d), cat("resnet", d)));
    return runs;
  };
  e.panels = {{"plain nets", "plain", {"train_error", "test_error"}, "error (%)"},
              {"residual nets", "residual", {"train_error", "test_error"}, "error (%)"}};
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result &p20 = r.at("plain20"), &p56 = r.at("plain56"), &r20 = r.at("resnet20"), &r56 = r.at("resnet56");
    const bool plain = p56.train_error > p20.train_error, residual = r56.train_error < r20.train_error;
    return cat(yes_no(plain && residual, plain || residual), ": plain-56 ends at a ",
               plain ? "higher" : "lower", " training error than plain-20 (", pct(p56.train_error), " against ",
               pct(p20.train_error), "), ResNet-56 at a ", residual ? "lower" : "higher", " one than ResNet-20 (",
               pct(r56.train_error), " against ", pct(r20.train_error), "); test error ", pct(p56.test_error), " / ",
               pct(p20.test_error), " plain, ", pct(r56.test_error), " / ", pct(r20.test_error), " residual.");
  };
  return e;
}

Experiment shortcuts() {
  Experiment e;
  e.name = "shortcuts";
  e.title = "shortcut options A, B and C";
  e.paper = "ResNet paper, Table 3 (ImageNet ResNet-34)";
  e.paper_metric = "ResNet-34 top-1 error %, 10-crop";
  e.seeds = 3;
  e.iters = 2000;
  e.test_limit = 5000;
  e.eval_every = 250;
  e.runs = [](const Scale& s) {
    const std::string model = s.full ? "resnet56" : "resnet20";
    std::vector<Run> runs;
    for (auto [o, paper] : {std::pair{"A", "25.03"}, {"B", "24.52"}, {"C", "24.19"}}) {
      Run r = cifar(cat("option-", o), cat(model, " option ", o), "", paper, model);
      r.config.shortcut = o;
      runs.push_back(r);
    }
    return runs;
  };
  e.panels = error_panels();
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result &a = r.at("option-A"), &b = r.at("option-B"), &c = r.at("option-C");
    const bool order = c.test_error <= b.test_error && b.test_error <= a.test_error;
    const double gap = extreme(r, false).test_error - extreme(r, true).test_error, spread = noise(r);
    return cat(order ? "ordering reproduced" : "ordering not reproduced", ": test error A ", pct(a.test_error), ", B ",
               pct(b.test_error), ", C ", pct(c.test_error), " (the paper: C ≤ B ≤ A, within 0.84 points); the widest gap, ",
               points(gap), ", is ", gap <= spread ? "within" : "beyond", " the seed-to-seed spread of ",
               points(spread), ".");
  };
  return e;
}

// Identity Mappings, Table 1: the shortcut maps on one deep original-unit ResNet.
Experiment identity_shortcut() {
  Experiment e;
  e.name = "identity-shortcut";
  e.title = "identity shortcuts against the other shortcut maps";
  e.paper = "Identity Mappings paper, Table 1 (ResNet-110, CIFAR-10)";
  e.paper_metric = "ResNet-110 CIFAR-10 test error %";
  e.seeds = 1;
  e.iters = 1200;
  e.test_limit = 5000;
  e.eval_every = 200;
  e.runs = [](const Scale& s) {
    const std::string model = s.full ? "resnet110" : "resnet56";
    auto map = [&](std::string name, std::string label, std::string paper, std::string kind, std::string param) {
      std::vector<std::pair<std::string, std::string>> o;
      if (!kind.empty()) o.push_back({"shortcut-map", kind});
      if (!param.empty()) o.push_back({"shortcut-param", param});
      Run r = cifar(std::move(name), std::move(label), "", std::move(paper), model, std::move(o));
      if (s.full) warm_up(r, s);
      return r;
    };
    std::vector<Run> runs{
        map("identity", "identity", "6.61", "", ""),
        map("scaling", "constant scaling 0.5", "12.35", "scaling", "0.5"),
        map("exclusive-gate", "exclusive gating (bias -6)", "8.70", "exclusive-gate", "-6"),
        map("shortcut-gate-0", "shortcut-only gating (bias 0)", "12.86", "shortcut-gate", "0"),
        map("shortcut-gate-6", "shortcut-only gating (bias -6)", "6.91", "shortcut-gate", "-6"),
        map("conv1x1", "1x1 conv shortcut", "12.22", "conv1x1", ""),
        map("dropout", "dropout 0.5 shortcut", "fails", "dropout", "0.5"),
    };
    // The paper's dropout shortcut fails to converge; here it may end non-finite.
    runs.back().may_diverge = true;
    return runs;
  };
  e.panels = error_panels();
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result& id = r.at("identity");
    const bool best = extreme(r, true).run->name == "identity";
    // The paper's clearly worse maps: more than a point above identity here, or failing.
    std::string worse, not_worse;
    for (const char* name : {"scaling", "shortcut-gate-0", "conv1x1", "dropout"}) {
      const Result& x = r.at(name);
      const bool failed = x.seeds == 0;
      std::string& list = failed || x.test_error > id.test_error + 1 ? worse : not_worse;
      list += cat(list.empty() ? "" : ", ", x.run->label, " ", failed ? "diverged" : pct(x.test_error));
    }
    return cat(yes_no(best && not_worse.empty(), best || !worse.empty()), ": identity ",
               best ? "has the lowest test error (" : "does not have the lowest test error (", pct(id.test_error),
               best ? "" : cat("; lowest: ", extreme(r, true).run->label, " ", pct(extreme(r, true).test_error)), ")",
               worse.empty() ? "" : "; more than a point worse, as in the paper: " + worse,
               not_worse.empty() ? "" : "; within a point of identity, unlike the paper: " + not_worse, ".");
  };
  return e;
}

// Identity Mappings, Table 2: the order of BN, ReLU and addition in a residual unit.
Experiment unit_order() {
  Experiment e;
  e.name = "unit-order";
  e.title = "the five orders of BN, ReLU and addition";
  e.paper = "Identity Mappings paper, Table 2 (ResNet-110, CIFAR-10)";
  e.paper_metric = "ResNet-110 CIFAR-10 test error %";
  e.seeds = 1;
  e.iters = 1500;
  e.test_limit = 5000;
  e.eval_every = 250;
  e.runs = [](const Scale& s) {
    const std::string model = s.full ? "resnet110" : "resnet56";
    std::vector<Run> runs;
    for (auto [unit, label, paper] :
         {std::tuple{"original", "original", "6.61"}, {"bn-after-add", "BN after addition", "8.17"},
          {"relu-before-add", "ReLU before addition", "7.84"}, {"relu-preact", "ReLU-only pre-activation", "6.71"},
          {"full-preact", "full pre-activation", "6.37"}}) {
      Run r = cifar(unit, label, "", paper, model, {{"unit", unit}});
      if (s.full) warm_up(r, s);
      runs.push_back(r);
    }
    return runs;
  };
  e.panels = error_panels();
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result &lo = extreme(r, true), &hi = extreme(r, false);
    const bool best = lo.run->name == "full-preact", worst = hi.run->name == "bn-after-add";
    return cat(yes_no(best && worst, best || worst), ": lowest test error ", lo.run->label, " ", pct(lo.test_error),
               " (the paper: full pre-activation), highest ", hi.run->label, " ", pct(hi.test_error),
               " (the paper: BN after addition); the two differ by ", points(hi.test_error - lo.test_error), ".");
  };
  return e;
}

// Identity Mappings, Fig. 1 and Table 3: original against pre-activation units at depth.
Experiment depth() {
  Experiment e;
  e.name = "depth";
  e.title = "original against pre-activation units at great depth";
  e.paper = "Identity Mappings paper, Fig. 1 and Table 3 (CIFAR-10)";
  e.paper_metric = "CIFAR-10 test error % (164 layers; 1001 with --full)";
  e.seeds = 1;
  e.iters = 2000;
  e.test_limit = 5000;
  e.eval_every = 200;
  e.runs = [](const Scale& s) {
    const std::string model = s.full ? "preact_resnet1001" : "preact_resnet164";
    const int layers = s.full ? 1001 : 164;
    Run original = cifar("original", cat("original, ", layers, " layers"), "", s.full ? "7.61" : "5.93", model,
                         {{"unit", "original"}});
    Run preact = cifar("full-preact", cat("pre-activation, ", layers, " layers"), "", s.full ? "4.92" : "5.46", model);
    warm_up(original, s);
    warm_up(preact, s);
    return std::vector<Run>{original, preact};
  };
  e.panels = {{"training loss", "", {"train_loss"}, "loss", true}, {"test error", "", {"test_error"}, "error (%)"}};
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result &o = r.at("original"), &p = r.at("full-preact");
    const bool loss = p.train_loss < o.train_loss, test = p.test_error < o.test_error;
    return cat(yes_no(loss && test, loss || test), ": pre-activation ends at training loss ", p.train_loss,
               " against ", o.train_loss, " and test error ", pct(p.test_error), " against ", pct(o.test_error), ".");
  };
  return e;
}

// Rethinking the Inception Architecture, Sec. 3: factorised convolutions cost fewer
// multiply-adds for no loss of accuracy. inception_mini (models.h) each way.
Experiment factorization() {
  Experiment e;
  e.name = "factorization";
  e.title = "factorised convolutions";
  e.paper = "Rethinking the Inception Architecture, Sec. 3 (Fig. 1, 3, 6)";
  e.paper_metric = "the paper's saving in those convs' multiply-adds";
  e.seeds = 2;
  e.iters = 2000;
  e.test_limit = 5000;
  e.eval_every = 250;
  e.runs = [](const Scale&) {
    std::vector<Run> runs;
    for (auto [f, label, paper] :
         {std::tuple{"none", "unfactorised (5x5, 7x7, 3x3)", ""}, {"5x5", "5x5 as two 3x3", "28% fewer"},
          {"7x7", "7x7 as 1x7 then 7x1", "(71% fewer)"}, {"3x3", "3x3 as 3x1 then 1x3", "33% fewer"},
          {"all", "all three factorised", ""}})
      runs.push_back(cifar(cat("factorize-", f), label, "", paper, "inception_mini", {{"factorize", f}}));
    return runs;
  };
  e.panels = error_panels();
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result& none = r.at("factorize-none");
    const double spread = noise(r);
    std::string each;
    bool kept = true;
    for (const char* f : {"factorize-5x5", "factorize-7x7", "factorize-3x3", "factorize-all"}) {
      const Result& x = r.at(f);
      const double saved = 100.0 * (1.0 - static_cast<double>(x.macs) / static_cast<double>(none.macs));
      const bool ok = x.test_error <= none.test_error + spread;
      kept = kept && ok;
      each += cat(each.empty() ? "" : "; ", x.run->label, ": ", fixed(saved, 1), "% fewer MACs in the net, test error ",
                  pct(x.test_error), ok ? "" : " (worse beyond the noise)");
    }
    return cat(yes_no(kept), ": against the unfactorised net's ", pct(none.test_error), " (seed spread ",
               points(spread), "): ", each, ".");
  };
  return e;
}

// Rethinking the Inception Architecture, Sec. 7: label smoothing (epsilon 0.1) gains a
// little accuracy; it also changes the calibration, measured here as the expected
// calibration error.
Experiment label_smoothing() {
  Experiment e;
  e.name = "label-smoothing";
  e.title = "label smoothing";
  e.paper = "Rethinking the Inception Architecture, Sec. 7 (ImageNet)";
  e.paper_metric = "ImageNet top-1 error";
  e.seeds = 3;
  e.iters = 2000;
  e.test_limit = 5000;
  e.eval_every = 250;
  e.report_ece = true;
  e.runs = [](const Scale&) {
    Run off = cifar("eps-0", "no smoothing", "", "", "inception_mini");
    Run on = cifar("eps-0.1", "smoothing 0.1", "", "about 0.2 points lower", "inception_mini");
    on.config.label_smoothing = 0.1;
    return std::vector<Run>{off, on};
  };
  e.panels = {{"test error", "", {"test_error"}, "error (%)"},
              {"calibration (ECE, 15 bins)", "", {"test_ece"}, "expected calibration error (%)"}};
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result &off = r.at("eps-0"), &on = r.at("eps-0.1");
    const double gain = off.test_error - on.test_error, spread = noise(r);
    return cat(yes_no(gain > 0 && gain > spread, gain > 0), ": test error ", pct(on.test_error), " with smoothing against ",
               pct(off.test_error), " without (a gain of ", points(gain), "; the paper: 0.2 points), ",
               std::abs(gain) <= spread ? "within" : "beyond", " the seed spread of ", points(spread),
               "; calibration error ", pct(on.test_ece), " against ", pct(off.test_ece), ".");
  };
  return e;
}

// The training time a run took to first reach a test error of `target` or below
// (seed 0), or -1 if it never did.
double seconds_to(const Result& r, double target) {
  for (const Result::Point& p : r.curve)
    if (p.test_error <= target) return p.train_seconds;
  return -1;
}

// Inception-v4 paper, Sec. 5 and Figs. 21-26: residual connections speed up the
// training of Inception networks; the final errors end close.
Experiment inception_residual() {
  Experiment e;
  e.name = "inception-residual";
  e.title = "residual connections in Inception networks";
  e.paper = "Inception-v4 paper, Figs. 21-26 (ImageNet)";
  e.paper_metric = "ImageNet top-1 error % (single crop, Table 2)";
  e.seeds = 1;
  e.iters = 3000;
  e.test_limit = 5000;
  e.eval_every = 250;
  e.runs = [](const Scale& s) {
    auto net = [&](std::string name, std::string label, std::string group, std::string paper, const std::string& m) {
      Run r = inception(std::move(name), std::move(label), std::move(group), std::move(paper), m, s, 64);
      r.config.image = s.full ? 299 : 75;
      if (m == "inception_v3") r.config.aux = false;  // the other three have no auxiliary head
      return r;
    };
    return std::vector<Run>{net("inception-v3", "Inception-v3", "v3", "21.2", "inception_v3"),
                            net("inception-resnet-v1", "Inception-ResNet-v1", "v3", "21.3", "inception_resnet_v1"),
                            net("inception-v4", "Inception-v4", "v4", "20.0", "inception_v4"),
                            net("inception-resnet-v2", "Inception-ResNet-v2", "v4", "19.9", "inception_resnet_v2")};
  };
  Panel by_time{"test error against training time", "", {"test_error"}, "error (%)"};
  by_time.x = "train_seconds";
  e.panels = {{"against iterations", "", {"train_error", "test_error"}, "error (%)"}, by_time};
  e.verdict = [](const std::map<std::string, Result>& r) {
    std::string text;
    bool sooner_all = true, sooner_any = false, close_all = true;
    for (auto [plain, residual] : {std::pair{"inception-v3", "inception-resnet-v1"}, {"inception-v4", "inception-resnet-v2"}}) {
      const Result &p = r.at(plain), &q = r.at(residual);
      // The time each took to reach the worse of the two final errors.
      const double target = std::max(p.test_error, q.test_error), tp = seconds_to(p, target), tq = seconds_to(q, target);
      const bool sooner = tq >= 0 && tp >= 0 && tq < tp;
      sooner_all = sooner_all && sooner;
      sooner_any = sooner_any || sooner;
      // The paper's final errors differ by 0.1 points; "close" here: within a point.
      const double gap = std::abs(p.test_error - q.test_error);
      close_all = close_all && gap <= 1.0;
      auto when = [](double t) { return t < 0 ? std::string("never") : cat("after ", fixed(t, 0), " s"); };
      text += cat(text.empty() ? "" : "; ", q.run->label, " reached ", pct(target), " ", when(tq), " of training, ",
                  p.run->label, " ", when(tp), "; final test errors ", pct(q.test_error), " and ", pct(p.test_error),
                  gap <= 1.0 ? " (close)" : cat(" (", points(gap), " apart)"));
    }
    return cat(yes_no(sooner_all && close_all, sooner_any), ": ", text, ".");
  };
  return e;
}

// Inception-v4 paper, Sec. 3.3: "if the number of filters exceeded 1000, the residual
// variants started to exhibit instabilities and the network has just 'died' early in
// the training, meaning that the last layer before the average pooling started to
// produce only zeros"; scaling the residuals by 0.1 to 0.3 before the addition kept
// training stable. Inception-ResNet-v2 at two widths (its last blocks carry 1040 and
// 2080 channels: beyond the paper's 1000), unscaled against 0.1 / 0.2 / 0.3, at two
// aggressive constant learning rates (5x and 2x the ResNet recipe's), recording the
// zeros entering the pool.
struct ScalingArm {
  const char *width, *lr;
  std::string prefix() const {  // the runs of lr 0.5 came first and keep their names
    return cat("w", width, lr == std::string("0.5") ? "" : cat("-lr", lr));
  }
  std::string group() const { return cat("width ", width, ", lr ", lr); }
};
constexpr ScalingArm kScalingArms[] = {{"0.5", "0.5"}, {"1", "0.5"}, {"0.5", "0.2"}, {"1", "0.2"}};

Experiment residual_scaling() {
  Experiment e;
  e.name = "residual-scaling";
  e.title = "scaling the residuals of wide Inception-ResNets";
  e.paper = "Inception-v4 paper, Sec. 3.3 (ImageNet)";
  e.paper_metric = "the paper's account";
  e.seeds = 1;
  e.iters = 600;
  e.test_limit = 2000;
  e.eval_every = 50;
  e.report_zeros = true;
  e.runs = [](const Scale& s) {
    std::vector<Run> runs;
    for (const ScalingArm& arm : kScalingArms) {
      if (s.full && std::string(arm.width) != "1") continue;
      for (auto [scale, label, paper] : {std::tuple{"1", "unscaled", "dies early (> 1000 filters)"},
                                         {"0.3", "scale 0.3", "trains"}, {"0.2", "scale 0.2", "trains"},
                                         {"0.1", "scale 0.1", "trains"}}) {
        Run r = cifar(cat(arm.prefix(), "-", scale == std::string("1") ? "none" : scale),
                      cat(arm.group(), ", ", label), arm.group(), paper, "inception_resnet_v2",
                      {{"width", arm.width}, {"residual-scale", scale}});
        r.config.image = s.full ? 299 : 75;
        r.config.batch = 32;
        // Aggressive: 5x or 2x the ResNet recipe's rate, constant, no warm-up.
        r.config.lr = std::stod(arm.lr);
        r.config.schedule = "constant";
        r.may_diverge = true;
        runs.push_back(r);
      }
    }
    return runs;
  };
  for (const ScalingArm& arm : kScalingArms) {
    e.panels.push_back({cat("training loss, ", arm.group()), arm.group(), {"train_loss"}, "loss", true});
    e.panels.push_back({cat("zeros entering the pool, ", arm.group()), arm.group(), {"pool_input_zeros"}, "fraction of zeros"});
  }
  e.verdict = [](const std::map<std::string, Result>& r) {
    // Dead: the loss went non-finite, or (nearly) every value entering the pool is 0,
    // or the net learned nothing (training loss at chance, ln 10, or above).
    auto dead = [](const Result& x) {
      return x.seeds == 0 || (!std::isnan(x.pool_zeros) && x.pool_zeros > 0.99) || x.train_loss >= 0.95 * std::log(10.0);
    };
    std::string text;
    // Reproduced: in some arm the unscaled net died and every scaled one trained;
    // partly: in some arm the unscaled net died and some scaled one trained. An arm in
    // which every net died says nothing of the scaling: its rate killed them all.
    bool reproduced = false, partly = false, any = false;
    for (const ScalingArm& arm : kScalingArms) {
      const auto none = r.find(arm.prefix() + "-none");
      if (none == r.end()) continue;
      any = true;
      const bool died = dead(none->second);
      bool all_trained = true, some_trained = false;
      std::string scaled;
      for (const char* sc : {"0.3", "0.2", "0.1"}) {
        const Result& x = r.at(cat(arm.prefix(), "-", sc));
        all_trained = all_trained && !dead(x);
        some_trained = some_trained || !dead(x);
        scaled += cat(scaled.empty() ? "" : ", ", sc, ": ", x.seeds == 0 ? "diverged" : cat(dead(x) ? "died " : "", pct(x.test_error)));
      }
      reproduced = reproduced || (died && all_trained);
      partly = partly || (died && some_trained);
      const Result& n = none->second;
      text += cat(text.empty() ? "" : "; ", arm.group(), ": unscaled ",
                  n.seeds == 0 ? "diverged (" + n.diverged_at + ")"
                               : cat(died ? "died" : "trained", ", test error ", pct(n.test_error),
                                     std::isnan(n.pool_zeros) ? "" : cat(", ", fixed(100 * n.pool_zeros), "% zeros entering the pool")),
                  "; scaled (test error) ", scaled,
                  died && !some_trained ? " (every net died: this rate kills them all)"
                  : !died               ? " (the unscaled net did not die)"
                                        : "");
    }
    if (!any) return std::string("no runs");
    return cat(yes_no(reproduced, partly), ": ", text, ".");
  };
  return e;
}

// Rethinking the Inception Architecture, Sec. 4 and 7: the auxiliary classifier does
// not speed up early training but helps a little at the end, as a regulariser; with
// its fully connected layer batch-normalised (BN-auxiliary), a little more.
// inception_v3_79 keeps the 17x17 grid the head needs at a 79x79 input.
Experiment aux_classifier() {
  Experiment e;
  e.name = "aux-classifier";
  e.title = "Inception-v3's auxiliary classifier";
  e.paper = "Rethinking the Inception Architecture, Sec. 4 and 7 (ImageNet)";
  e.paper_metric = "the paper's account (top-1 error, Table 3)";
  e.seeds = 2;
  e.iters = 1200;
  e.train_limit = 20000;
  e.test_limit = 5000;
  e.eval_every = 200;
  e.runs = [](const Scale& s) {
    const std::string model = s.full ? "inception_v3" : "inception_v3_79";
    auto net = [&](std::string name, std::string label, std::string paper) {
      return inception(std::move(name), std::move(label), "", std::move(paper), model, s, 32);
    };
    Run none = net("no-aux", "no auxiliary head", "");
    none.config.aux = false;
    Run aux = net("aux", "auxiliary head (weight 0.4)", "no faster early on; a little better at the end");
    Run bn = net("aux-bn", "BN-auxiliary head", "0.4 points better still (top-1)");
    bn.config.model_options.emplace_back("aux-bn", "true");
    return std::vector<Run>{none, aux, bn};
  };
  e.panels = {{"training error", "", {"train_error"}, "error (%)"}, {"test error", "", {"test_error"}, "error (%)"}};
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result &none = r.at("no-aux"), &aux = r.at("aux"), &bn = r.at("aux-bn");
    const double spread = noise(r);
    // Early: the first evaluation's test error of seed 0.
    auto early = [](const Result& x) { return x.curve.empty() ? std::nan("") : x.curve.front().test_error; };
    const bool end = aux.test_error < none.test_error, bn_better = bn.test_error < aux.test_error;
    const bool not_faster = !(early(aux) < early(none) - spread);
    return cat(yes_no(end && bn_better && not_faster && aux.test_error + spread < none.test_error, end || bn_better),
               ": final test error ", pct(none.test_error), " without the head, ", pct(aux.test_error), " with it, ",
               pct(bn.test_error), " with the BN-auxiliary head; at the first evaluation ", pct(early(none)), " / ",
               pct(early(aux)), " / ", pct(early(bn)), "; seed spread ", points(spread),
               end && aux.test_error + spread >= none.test_error ? " (the gain is within it)" : "", ".");
  };
  return e;
}

// Rethinking the Inception Architecture, Sec. 9 and Table 2: at about equal compute,
// nets for 299x299, 151x151 and 79x79 inputs (their stems changed so that the grids
// from 35x35 on are the same) end close: 76.6 / 76.4 / 75.2% top-1 on ImageNet.
Experiment low_resolution() {
  Experiment e;
  e.name = "low-resolution";
  e.title = "lower-resolution input at equal compute";
  e.paper = "Rethinking the Inception Architecture, Sec. 9 and Table 2 (ImageNet)";
  e.paper_metric = "ImageNet top-1 error %";
  e.seeds = 1;
  e.iters = 2000;
  e.train_limit = 20000;
  e.test_limit = 5000;
  e.eval_every = 250;
  e.runs = [](const Scale& s) {
    std::vector<Run> runs;
    for (auto [model, label, paper] : {std::tuple{"inception_v3", "299x299 (stride 2, max pool)", "23.4"},
                                       {"inception_v3_151", "151x151 (stride 1, max pool)", "23.6"},
                                       {"inception_v3_79", "79x79 (stride 1, no pool)", "24.8"}}) {
      Run r = inception(model, label, "", paper, model, s, 32);
      r.config.aux = false;  // the three differ in the stem alone
      runs.push_back(r);
    }
    return runs;
  };
  e.panels = error_panels();
  e.verdict = [](const std::map<std::string, Result>& r) {
    const Result &a = r.at("inception_v3"), &b = r.at("inception_v3_151"), &c = r.at("inception_v3_79");
    const double span = std::max({a.test_error, b.test_error, c.test_error}) -
                        std::min({a.test_error, b.test_error, c.test_error});
    // The paper's three lie within 1.4 points; "close" here: within 2.
    return cat(yes_no(span <= 2.0, span <= 4.0), ": test error ", pct(a.test_error), " / ", pct(b.test_error), " / ",
               pct(c.test_error), " at 299 / 151 / 79 (", fixed(a.macs / 1e6, 0), " / ", fixed(b.macs / 1e6, 0), " / ",
               fixed(c.macs / 1e6, 0), " M MACs), ", points(span), " apart (the paper: 1.4 points).");
  };
  return e;
}

}  // namespace

const std::vector<Experiment>& catalog() {
  static const std::vector<Experiment> all = {
      degradation(),        shortcuts(),         identity_shortcut(), unit_order(),     depth(),
      inception_residual(), residual_scaling(),  factorization(),     aux_classifier(), label_smoothing(),
      low_resolution()};
  return all;
}

}  // namespace incres::experiments
