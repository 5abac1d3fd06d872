// The model zoo: names -> graph builders.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "graph/graph.h"

namespace incres::models {

// ResNet paper, Sec. 3.3, where a block changes shape: A zero-padded identity with
// strided subsampling (no parameters); B 1x1 projection (+BN) only there; C projection
// on every shortcut.
enum class Shortcut { A, B, C };

// Identity Mappings paper, Fig. 4: where BN and ReLU sit in a residual unit.
enum class Unit {
  original,         // conv-BN-ReLU-conv-BN, add, ReLU
  bn_after_add,     // conv-BN-ReLU-conv, add, BN, ReLU
  relu_before_add,  // conv-BN-ReLU-conv-BN-ReLU, add
  relu_preact,      // ReLU-conv-BN-ReLU-conv-BN, add
  full_preact,      // BN-ReLU-conv-BN-ReLU-conv, add
};

// Identity Mappings paper, Fig. 2: what the shortcut does to x (h(x)).
enum class ShortcutMap {
  identity,        // h(x) = x (A/B/C decide where shapes change)
  scaling,         // h(x) = lambda x; the residual is scaled by residual_scale (1 - lambda)
  exclusive_gate,  // g = sigmoid(1x1 conv(x) + b): y = g F(x) + (1 - g) x
  shortcut_gate,   // y = F(x) + (1 - g) x
  conv1x1,         // h(x) = 1x1 conv (+BN in non-preact units) on every unit, like C
  dropout,         // h(x) = dropout(x, p)
};

// inception_mini's factorisations (Rethinking §3), as bits of ModelConfig::factorize:
// 5x5 as two 3x3, 7x7 as 1x7 then 7x1, 3x3 as 3x1 then 1x3.
constexpr int kFactorize5x5 = 1, kFactorize7x7 = 2, kFactorize3x3 = 4, kFactorizeAll = 7;

struct ModelConfig {
  int64_t in_channels = 3;
  int64_t classes = 10;
  int64_t image = 32;           // input height = width
  Shortcut shortcut = Shortcut::A;
  // ImageNet bottlenecks: stride on the 3x3 (v1.5, torchvision) or on the first 1x1
  // (v1, the paper's Caffe models).
  bool stride_on_3x3 = true;
  Unit unit = Unit::original;
  ShortcutMap shortcut_map = ShortcutMap::identity;
  // lambda (scaling), the gate's bias at initialisation (gates), or p (dropout).
  float shortcut_param = 0.f;
  // Residual branch scale: Inception-ResNet's 0.1-0.3, the scaling ablation's
  // (1 - lambda); < 0 means the model's default, 1 means none.
  float residual_scale = -1.f;
  bool aux = true;              // Inception-v3's auxiliary classifier
  bool aux_bn = false;          // ... with its fully connected layer batch-normalised (BN-auxiliary)
  double width = 1.0;           // Inception channel multiplier (rounded to multiples of 8)
  bool paper_layout = false;    // Inception-ResNet-v2: the paper's 5/10/5 blocks, not 10/20/10
  float dropout = -1.f;         // before the classifier; < 0 means the model's default
  int factorize = kFactorizeAll;  // inception_mini: which spatial convs are factorised (bits below)
};

struct ModelInfo {
  std::string name;
  std::string description;
  ModelConfig defaults;
  std::function<graph::Graph(const ModelConfig&)> build;
};

const std::vector<ModelInfo>& registry();
// Throws an Error listing the known names when `name` is not registered.
const ModelInfo& find_model(const std::string& name);
graph::Graph build_model(const std::string& name, const ModelConfig& cfg);

// CIFAR ResNet of 6n+2 layers (ResNet paper, Sec. 4.2); residual=false gives the plain net.
graph::Graph cifar_resnet(int n, bool residual, const ModelConfig& cfg);
// CIFAR bottleneck ResNet of 9n+2 layers, stage outputs 64/128/256 (Identity Mappings,
// Sec. 4: ResNet-164 and -1001).
graph::Graph cifar_bottleneck_resnet(int n, const ModelConfig& cfg);
// ImageNet ResNet (ResNet paper, Table 1): blocks per stage, basic or bottleneck.
graph::Graph imagenet_resnet(const std::vector<int>& blocks, bool bottleneck, bool residual,
                             const ModelConfig& cfg);

// Inception-v3 (Rethinking the Inception Architecture), torchvision's layout and names.
// stem_stride1 / stem_pool: the paper's low-resolution variants (Sec. 7).
graph::Graph inception_v3(const ModelConfig& cfg, bool stem_stride1 = false, bool stem_pool = true);
// Inception-v4 and Inception-ResNet-v1/-v2 (Szegedy et al. 2017), timm's names.
graph::Graph inception_v4(const ModelConfig& cfg);
graph::Graph inception_resnet_v1(const ModelConfig& cfg);
graph::Graph inception_resnet_v2(const ModelConfig& cfg);
// A small Inception-style net for the factorisation study: Inception-v3's three grids
// at 16x16, 8x8 and 4x4, two blocks each, with 5x5, 7x7 and 3x3 convs factorised or not.
graph::Graph inception_mini(const ModelConfig& cfg);

// Sets one architecture option by its command-line name (without the dashes):
// shortcut A|B|C, stride v1|v1.5, unit, shortcut-map, shortcut-param, residual-scale,
// width, paper-layout true|false, aux true|false, aux-bn true|false, dropout. Throws Error naming the
// option and what it accepts. Runs record these key/value pairs in their checkpoints
// so `incres eval` rebuilds the same network.
void set_option(ModelConfig& c, const std::string& key, const std::string& value);
// The option names set_option knows, for messages and --help.
const std::vector<std::string>& option_names();

// The architecture options every command that builds a model takes as flags of the
// same name, in one table: the CLI makes its flags and their --help from it, records
// the given ones in a run (set_option parses them), and refuses them where a
// checkpoint already records the architecture. (--shortcut and --no-aux, which the
// commands spell with choices and as a negation, are the CLI's own.)
struct ArchOption {
  std::string name;  // set_option's key, and the flag without its dashes
  std::string help;
  bool flag = false;  // set by its presence ("true"), else it takes a value
  // The models it changes, in words and as a test; null: every model.
  const char* applies_to = nullptr;
  bool (*applies)(const std::string& model) = nullptr;
};
const std::vector<ArchOption>& arch_options();
// Refuses (Error) an option, or "shortcut" / "aux" / "aux-weight", given for a model it does nothing
// for: "--width applies to Inception models, not resnet20".
void check_option_applies(const std::string& model, const std::string& key);

Shortcut parse_shortcut(const std::string& s);
Unit parse_unit(const std::string& s);
ShortcutMap parse_shortcut_map(const std::string& s);

}  // namespace incres::models
