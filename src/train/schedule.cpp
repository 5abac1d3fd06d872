#include "train/schedule.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <numbers>

#include "core/error.h"

namespace incres::train {

namespace {

// PyTorch's _annealing_cos: from `start` at pct 0 to `end` at pct 1.
double anneal_cos(double start, double end, double pct) {
  return end + (start - end) / 2.0 * (std::cos(std::numbers::pi * pct) + 1.0);
}

bool positive(double v) { return std::isfinite(v) && v > 0; }

}  // namespace

Schedule::Schedule(ScheduleOptions o) : opt_(std::move(o)) {
  const ScheduleOptions& s = opt_;
  const std::string& k = s.kind;
  INCRES_CHECK(k == "multistep" || k == "exp" || k == "cosine" || k == "onecycle" || k == "constant",
               "schedule: kind '", k, "' is unknown; use multistep, exp, cosine, onecycle or constant");
  INCRES_CHECK(positive(s.lr), "schedule: lr must be finite and > 0, got ", s.lr);
  INCRES_CHECK(s.total_iters >= 0, "schedule: total_iters must be >= 0, got ", s.total_iters);
  INCRES_CHECK(s.warmup_iters >= 0, "schedule: warmup_iters must be >= 0, got ", s.warmup_iters);
  if (s.warmup_iters > 0) {
    INCRES_CHECK(s.warmup_kind == "constant" || s.warmup_kind == "linear", "schedule: warmup_kind '",
                 s.warmup_kind, "' is unknown; use constant or linear");
    INCRES_CHECK(positive(s.warmup_lr), "schedule: warmup_lr must be finite and > 0, got ",
                 s.warmup_lr);
    INCRES_CHECK(k != "onecycle", "schedule: onecycle has its own warm-up phase; set warmup_iters "
                 "to 0 (got ", s.warmup_iters, ")");
    INCRES_CHECK(s.total_iters == 0 || s.warmup_iters < s.total_iters, "schedule: warmup_iters (",
                 s.warmup_iters, ") must be less than total_iters (", s.total_iters, ")");
  }
  if (k == "multistep") {
    INCRES_CHECK(positive(s.gamma), "schedule: gamma must be finite and > 0, got ", s.gamma);
    for (size_t i = 0; i < s.milestones.size(); ++i) {
      INCRES_CHECK(s.milestones[i] > 0, "schedule: milestone ", i, " must be > 0, got ",
                   s.milestones[i]);
      INCRES_CHECK(i == 0 || s.milestones[i] > s.milestones[i - 1],
                   "schedule: milestones must be strictly increasing, got ", s.milestones[i - 1],
                   " then ", s.milestones[i]);
    }
  } else {
    INCRES_CHECK(s.milestones.empty(), "schedule: milestones apply to multistep only, kind is '",
                 k, "'; drop them or use kind multistep");
  }
  if (k == "exp") {
    INCRES_CHECK(positive(s.decay_rate), "schedule: decay_rate must be finite and > 0, got ",
                 s.decay_rate);
    INCRES_CHECK(s.decay_iters > 0, "schedule: exp needs decay_iters > 0, got ", s.decay_iters);
  }
  if (k == "cosine") {
    INCRES_CHECK(s.total_iters > 0, "schedule: cosine needs total_iters > 0, got ", s.total_iters);
    INCRES_CHECK(std::isfinite(s.final_lr) && s.final_lr >= 0 && s.final_lr <= s.lr,
                 "schedule: final_lr must be in [0, lr = ", s.lr, "], got ", s.final_lr);
  }
  if (k == "onecycle") {
    INCRES_CHECK(s.total_iters > 0, "schedule: onecycle needs total_iters > 0, got ",
                 s.total_iters);
    INCRES_CHECK(s.onecycle_pct > 0 && s.onecycle_pct < 1,
                 "schedule: onecycle_pct must be in (0, 1), got ", s.onecycle_pct);
    // PyTorch's phase boundary is pct * total - 1; it must lie strictly inside
    // (0, total - 1) or a phase has zero length (PyTorch divides by zero there).
    double up_end = s.onecycle_pct * static_cast<double>(s.total_iters) - 1;
    INCRES_CHECK(up_end > 0 && up_end < static_cast<double>(s.total_iters) - 1,
                 "schedule: onecycle_pct * total_iters - 1 = ", up_end, " must be in (0, ",
                 s.total_iters - 1, "); raise total_iters or change onecycle_pct");
    INCRES_CHECK(positive(s.onecycle_div), "schedule: onecycle_div must be finite and > 0, got ",
                 s.onecycle_div);
    INCRES_CHECK(positive(s.onecycle_final_div),
                 "schedule: onecycle_final_div must be finite and > 0, got ", s.onecycle_final_div);
  }
}

double Schedule::main_lr(int64_t iter) const {
  const ScheduleOptions& s = opt_;
  if (s.kind == "constant") return s.lr;
  if (s.kind == "multistep") {
    double lr = s.lr;
    for (int64_t m : s.milestones)
      if (m <= iter) lr *= s.gamma;
    return lr;
  }
  if (s.kind == "exp")  // staircase: whole periods only, so lr is constant within one
    return s.lr * std::pow(s.decay_rate, static_cast<double>(iter / s.decay_iters));
  if (s.kind == "cosine") {
    if (iter >= s.total_iters) return s.final_lr;
    double t = static_cast<double>(iter) / static_cast<double>(s.total_iters);
    return anneal_cos(s.lr, s.final_lr, t);
  }
  // onecycle: PyTorch OneCycleLR.get_lr with two phases, step_num = iter.
  const double initial = s.lr / s.onecycle_div, min_lr = initial / s.onecycle_final_div;
  const double up_end = s.onecycle_pct * static_cast<double>(s.total_iters) - 1;
  const double down_end = static_cast<double>(s.total_iters) - 1;
  const double step = static_cast<double>(iter);
  if (step <= up_end) return anneal_cos(initial, s.lr, step / up_end);
  if (step >= down_end) return min_lr;
  return anneal_cos(s.lr, min_lr, (step - up_end) / (down_end - up_end));
}

double Schedule::lr(int64_t iter) const {
  INCRES_CHECK(iter >= 0, "schedule: iteration must be >= 0, got ", iter);
  const ScheduleOptions& s = opt_;
  if (iter < s.warmup_iters) {
    if (s.warmup_kind == "constant") return s.warmup_lr;
    // Linear from warmup_lr at iteration 0 towards lr at iteration warmup_iters (as
    // timm's warm-up does; a schedule already below lr there, e.g. cosine, takes over
    // with a small step down).
    double t = static_cast<double>(iter) / static_cast<double>(s.warmup_iters);
    return s.warmup_lr + (s.lr - s.warmup_lr) * t;
  }
  return main_lr(iter);
}

std::vector<int64_t> parse_milestones(const std::string& csv, int64_t iters_per_epoch) {
  std::vector<int64_t> out;
  size_t begin = 0;
  while (begin <= csv.size()) {
    size_t end = csv.find(',', begin);
    if (end == std::string::npos) end = csv.size();
    std::string tok = csv.substr(begin, end - begin);
    // Trim spaces.
    size_t a = tok.find_first_not_of(" \t"), b = tok.find_last_not_of(" \t");
    tok = a == std::string::npos ? "" : tok.substr(a, b - a + 1);
    if (tok.empty()) {
      // "" alone means no milestones; an empty item between commas is a typo.
      INCRES_CHECK(csv.find_first_not_of(" \t") == std::string::npos, "milestones \"", csv,
                   "\": empty item; write iterations like 32000,48000 or epochs like 91e,136e");
      break;
    }
    bool epochs = tok.back() == 'e';
    std::string num = epochs ? tok.substr(0, tok.size() - 1) : tok;
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
    INCRES_CHECK(!num.empty() && ec == std::errc() && ptr == num.data() + num.size() && v >= 0,
                 "milestones \"", csv, "\": '", tok,
                 "' is not a non-negative integer; write iterations like 32000 or epochs like 91e");
    if (epochs) {
      INCRES_CHECK(iters_per_epoch > 0, "milestones \"", csv, "\": '", tok,
                   "' is in epochs but iterations per epoch is ", iters_per_epoch,
                   "; give milestones in iterations");
      INCRES_CHECK(v <= std::numeric_limits<int64_t>::max() / iters_per_epoch, "milestones \"",
                   csv, "\": '", tok, "' times ", iters_per_epoch, " iterations overflows");
      v *= iters_per_epoch;
    }
    out.push_back(v);
    begin = end + 1;
  }
  return out;
}

}  // namespace incres::train
