#include <cmath>
#include <sstream>

#include "core/error.h"
#include "models/models.h"

namespace incres::models {

const std::vector<ModelInfo>& registry() {
  static const std::vector<ModelInfo> zoo = [] {
    std::vector<ModelInfo> r;
    // CIFAR family, 6n+2 layers (ResNet paper, Table 6).
    for (int n : {3, 5, 7, 9, 18, 200}) {
      int depth = 6 * n + 2;
      r.push_back({"resnet" + std::to_string(depth),
                   "CIFAR ResNet-" + std::to_string(depth) + " (n=" + std::to_string(n) +
                       ", 16/32/64 filters, 32x32)",
                   ModelConfig{}, [n](const ModelConfig& c) { return cifar_resnet(n, true, c); }});
    }
    for (int n : {3, 5, 7, 9, 18}) {
      int depth = 6 * n + 2;
      r.push_back({"plain" + std::to_string(depth),
                   "CIFAR plain net of " + std::to_string(depth) + " layers (no shortcuts)",
                   ModelConfig{}, [n](const ModelConfig& c) { return cifar_resnet(n, false, c); }});
    }

    // Pre-activation ResNets on CIFAR (Identity Mappings, Sec. 4 and Table 2).
    ModelConfig preact;
    preact.unit = Unit::full_preact;
    preact.shortcut = Shortcut::B;
    // 110 is the paper's; 20 and 56 are the small members of the same family, for
    // side-by-side runs with resnet20/56.
    for (int n : {3, 9, 18}) {
      int depth = 6 * n + 2;
      r.push_back({"preact_resnet" + std::to_string(depth),
                   "CIFAR pre-activation ResNet-" + std::to_string(depth) + " (basic units, n=" +
                       std::to_string(n) + ")",
                   preact, [n](const ModelConfig& c) { return cifar_resnet(n, true, c); }});
    }
    for (int n : {18, 111}) {
      int depth = 9 * n + 2;
      r.push_back({"preact_resnet" + std::to_string(depth),
                   "CIFAR pre-activation ResNet-" + std::to_string(depth) +
                       " (bottleneck units, n=" + std::to_string(n) + ", 64/128/256 out)",
                   preact, [n](const ModelConfig& c) { return cifar_bottleneck_resnet(n, c); }});
    }

    // ImageNet (ResNet paper, Table 1), torchvision's layout: v1.5, shortcut B.
    ModelConfig imagenet;
    imagenet.classes = 1000;
    imagenet.image = 224;
    imagenet.shortcut = Shortcut::B;
    const struct {
      int depth;
      std::vector<int> blocks;
      bool bottleneck;
    } nets[] = {{18, {2, 2, 2, 2}, false},   {34, {3, 4, 6, 3}, false},
                {50, {3, 4, 6, 3}, true},    {101, {3, 4, 23, 3}, true},
                {152, {3, 8, 36, 3}, true},  {200, {3, 24, 36, 3}, true}};
    for (const auto& n : nets) {
      const std::string d = std::to_string(n.depth);
      auto blocks = n.blocks;
      bool bn = n.bottleneck;
      r.push_back({"resnet" + d, "ImageNet ResNet-" + d + (bn ? " (bottleneck)" : " (basic)"), imagenet,
                   [blocks, bn](const ModelConfig& c) { return imagenet_resnet(blocks, bn, true, c); }});
      if (n.depth <= 34)
        r.push_back({"plain" + d, "ImageNet plain net of " + d + " layers (no shortcuts)", imagenet,
                     [blocks](const ModelConfig& c) { return imagenet_resnet(blocks, false, false, c); }});
      if (n.depth >= 152) {
        ModelConfig p = imagenet;
        p.unit = Unit::full_preact;
        r.push_back({"preact_resnet" + d, "ImageNet pre-activation ResNet-" + d, p,
                     [blocks](const ModelConfig& c) { return imagenet_resnet(blocks, true, true, c); }});
      }
    }

    // Inception (Rethinking the Inception Architecture; Inception-v4 paper).
    ModelConfig inception;
    inception.classes = 1000;
    inception.image = 299;
    r.push_back({"inception_v3", "Inception-v3 (torchvision layout, 299x299, aux head)", inception,
                 [](const ModelConfig& c) { return inception_v3(c); }});
    ModelConfig lowres = inception;
    lowres.image = 151;
    r.push_back({"inception_v3_151", "Inception-v3, 151x151 receptive field: stride-1 first conv + max pool (Sec. 7)",
                 lowres, [](const ModelConfig& c) { return inception_v3(c, true, true); }});
    lowres.image = 79;
    r.push_back({"inception_v3_79", "Inception-v3, 79x79 receptive field: stride-1 first conv, no pool (Sec. 7)",
                 lowres, [](const ModelConfig& c) { return inception_v3(c, true, false); }});
    r.push_back({"inception_v4", "Inception-v4 (timm names, 299x299)", inception,
                 [](const ModelConfig& c) { return inception_v4(c); }});
    r.push_back({"inception_resnet_v1", "Inception-ResNet-v1 (the paper's 5/10/5 blocks, 299x299)", inception,
                 [](const ModelConfig& c) { return inception_resnet_v1(c); }});
    r.push_back({"inception_resnet_v2", "Inception-ResNet-v2 (released 10/20/10 layout, timm names)", inception,
                 [](const ModelConfig& c) { return inception_resnet_v2(c); }});
    ModelConfig mini;  // CIFAR size
    r.push_back({"inception_mini", "small Inception-style net, 32x32, for the factorisation study (--factorize)",
                 mini, [](const ModelConfig& c) { return inception_mini(c); }});
    return r;
  }();
  return zoo;
}

const ModelInfo& find_model(const std::string& name) {
  std::string known;
  for (const ModelInfo& m : registry()) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + m.name;
  }
  fail("unknown model '", name, "'; known models: ", known, " (see `incres models`)");
}

graph::Graph build_model(const std::string& name, const ModelConfig& cfg) {
  return find_model(name).build(cfg);
}

namespace {

double parse_number(const std::string& key, const std::string& v) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  INCRES_CHECK(!v.empty() && used == v.size() && std::isfinite(x), "--", key, ": expected a number, got '", v, "'");
  return x;
}

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "true" || v == "1" || v == "on") return true;
  if (v == "false" || v == "0" || v == "off") return false;
  fail("--", key, ": expected true or false, got '", v, "'");
}

int parse_factorize(const std::string& v) {
  if (v == "all") return kFactorizeAll;
  if (v == "none") return 0;
  int bits = 0;
  std::stringstream items(v);
  for (std::string item; std::getline(items, item, ',');) {
    const int bit = item == "5x5" ? kFactorize5x5 : item == "7x7" ? kFactorize7x7 : item == "3x3" ? kFactorize3x3 : 0;
    INCRES_CHECK(bit != 0, "--factorize: expected all, none or a comma list of 5x5, 7x7 and 3x3, got '", v, "'");
    bits |= bit;
  }
  INCRES_CHECK(bits != 0, "--factorize: expected all, none or a comma list of 5x5, 7x7 and 3x3, got '", v, "'");
  return bits;
}
bool starts(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }
bool inception(const std::string& m) { return starts(m, "inception"); }
bool inception_v3(const std::string& m) { return starts(m, "inception_v3"); }
bool residual_resnet(const std::string& m) { return starts(m, "resnet") || starts(m, "preact_resnet"); }
bool any_resnet(const std::string& m) { return residual_resnet(m) || starts(m, "plain"); }
// The ImageNet bottleneck nets: ImageNet input and 50 layers or more.
bool imagenet_bottleneck(const std::string& m) {
  if (!residual_resnet(m)) return false;
  const int depth = std::atoi(m.c_str() + m.find_first_of("0123456789"));
  return depth >= 50 && find_model(m).defaults.image == 224;
}

}  // namespace

void check_option_applies(const std::string& model, const std::string& key) {
  find_model(model);  // an unknown name is its own error
  if (key == "shortcut") {
    INCRES_CHECK(any_resnet(model), "--shortcut applies to the ResNets and plain nets, not ", model);
    return;
  }
  if (key == "aux" || key == "aux-weight") {
    INCRES_CHECK(inception_v3(model), key == "aux" ? "--no-aux" : "--aux-weight",
                 " applies to Inception-v3 (the one model with an auxiliary classifier), not ", model);
    return;
  }
  for (const ArchOption& o : arch_options())
    if (o.name == key && o.applies && !o.applies(model))
      fail("--", key, " applies to ", o.applies_to, ", not ", model, "; it would change nothing");
}

const std::vector<ArchOption>& arch_options() {
  static const std::vector<ArchOption> table{
      {"stride", "ImageNet bottlenecks: v1.5 (stride on the 3x3, torchvision; default) or v1 (on the first 1x1, "
                 "the paper)", false, "the ImageNet bottleneck ResNets", imagenet_bottleneck},
      {"unit", "residual unit (Identity Mappings, Fig. 4): original, bn-after-add, relu-before-add, relu-preact, "
               "full-preact (default: the model's)", false, "the ResNets", residual_resnet},
      {"shortcut-map", "shortcut (Identity Mappings, Fig. 2): identity, scaling, exclusive-gate, shortcut-gate, "
                       "conv1x1, dropout", false, "the ResNets", residual_resnet},
      {"shortcut-param", "lambda for scaling, the gate's initial bias for the gates (e.g. -6), p for dropout", false,
       "the ResNets", residual_resnet},
      {"residual-scale", "scale of the residual branch: Inception-ResNet's blocks (1 = none; default "
                         "0.17/0.10/0.20), the scaling shortcut (default 1 - lambda)", false,
       "Inception-ResNet and the ResNets' shortcut maps", [](const std::string& m) {
         return starts(m, "inception_resnet") || residual_resnet(m);
       }},
      {"width", "Inception channel multiplier (e.g. 0.5; rounded to multiples of 8)", false, "Inception models",
       inception},
      {"dropout", "dropout before the classifier (default: the model's)", false, "Inception models", inception},
      {"paper-layout", "Inception-ResNet-v2 with the paper's 5/10/5 blocks instead of 10/20/10", true,
       "Inception-ResNet-v2", [](const std::string& m) { return starts(m, "inception_resnet_v2"); }},
      {"factorize", "inception_mini: the convs factorised, a comma list of 5x5 (two 3x3), 7x7 (1x7, 7x1), "
                    "3x3 (3x1, 1x3), or all (default) or none", false, "inception_mini",
       [](const std::string& m) { return m == "inception_mini"; }},
      {"aux-bn", "Inception-v3's BN-auxiliary: the auxiliary classifier's fully connected layer batch-normalised "
                 "(Sec. 7 of the paper)", true, "Inception-v3", inception_v3},
  };
  return table;
}

const std::vector<std::string>& option_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n{"shortcut", "aux"};
    for (const ArchOption& o : arch_options()) n.push_back(o.name);
    return n;
  }();
  return names;
}

void set_option(ModelConfig& c, const std::string& key, const std::string& v) {
  if (key == "shortcut") {
    c.shortcut = parse_shortcut(v);
  } else if (key == "stride") {
    INCRES_CHECK(v == "v1" || v == "v1.5", "--stride: expected v1 (stride on the first 1x1, the paper) or v1.5 "
                 "(stride on the 3x3, torchvision), got '", v, "'");
    c.stride_on_3x3 = v == "v1.5";
  } else if (key == "unit") {
    c.unit = parse_unit(v);
  } else if (key == "shortcut-map") {
    c.shortcut_map = parse_shortcut_map(v);
  } else if (key == "shortcut-param") {
    c.shortcut_param = static_cast<float>(parse_number(key, v));
  } else if (key == "residual-scale") {
    double s = parse_number(key, v);
    INCRES_CHECK(s >= 0, "--residual-scale must be >= 0, got ", v);
    c.residual_scale = static_cast<float>(s);
  } else if (key == "width") {
    double w = parse_number(key, v);
    INCRES_CHECK(w > 0 && w <= 4, "--width must be in (0, 4], got ", v);
    c.width = w;
  } else if (key == "paper-layout") {
    c.paper_layout = parse_bool(key, v);
  } else if (key == "aux") {
    c.aux = parse_bool(key, v);
  } else if (key == "aux-bn") {
    c.aux_bn = parse_bool(key, v);
  } else if (key == "factorize") {
    c.factorize = parse_factorize(v);
  } else if (key == "dropout") {
    double p = parse_number(key, v);
    INCRES_CHECK(p >= 0 && p < 1, "--dropout must be in [0, 1), got ", v);
    c.dropout = static_cast<float>(p);
  } else {
    std::string known;
    for (const auto& n : option_names()) known += (known.empty() ? "" : ", ") + n;
    fail("unknown model option '", key, "'; known: ", known);
  }
}

}  // namespace incres::models
