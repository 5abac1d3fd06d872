// The IR: a Graph is a list of Nodes in execution order. Each Node owns its op's
// attribute struct, the ids of its input Values and the ids of the Params it uses.
// Shapes are per sample (C, H, W) or (F); a Program adds the batch dimension.
#pragma once
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "core/shape.h"

namespace incres::graph {

// ---- Ops: one attribute struct each. Shape and cost rules live in ops.cpp. ----
struct Input {};
struct Conv2d {
  int64_t K;           // output channels
  int R, S;            // kernel height, width
  int stride = 1, pad_h = 0, pad_w = 0;
  bool bias = false;
};
struct BatchNorm {
  float eps = 1e-5f;       // PyTorch's default; Inception models use 1e-3
  float momentum = 0.1f;   // running = (1 - m) * running + m * batch (PyTorch's convention)
};
struct Relu {};
// y = a + scale * b: the residual sum (scale 1), and Inception-ResNet's scaled
// residual (Inception-v4 paper, Sec. 3.3: residuals scaled by 0.1-0.3 before the sum).
struct Add {
  float scale = 1.f;
};
// Option A shortcut (ResNet paper, Sec. 3.3): identity with stride-s subsampling
// (x[:, :, ::s, ::s]); the K - C new channels are zeros. No parameters.
struct ShortcutA {
  int64_t K;
  int stride;
};
struct GlobalAvgPool {};   // (C, H, W) -> (C)
struct Linear {
  int64_t out;
  bool bias = true;
};
// Max or average pooling over kernel x kernel windows, as PyTorch's MaxPool2d /
// AvgPool2d: output = floor((H + 2 pad - kernel) / stride) + 1, or ceil with
// ceil_mode, where a last window that would start in the right padding is dropped.
// Average pooling divides by the window clipped to the padded input
// (count_include_pad) or by the number of real input elements in it.
struct Pool2d {
  enum Kind { max, avg } kind;
  int kernel, stride, pad = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;
};
struct Concat {};          // along channels, inputs in order: (C1, H, W), (C2, H, W) ... -> (sum C, H, W)
// Training: zero each element with probability p and scale the rest by 1 / (1 - p)
// (inverted dropout, as PyTorch). Inference: identity. The mask is a pure function of
// (program seed, step, node, element), so ref and cpu backends draw the same one.
struct Dropout {
  float p = 0.5f;
};
struct Sigmoid {};         // y = 1 / (1 + exp(-x))
struct Mul {};             // y = a * b, elementwise (gated shortcuts)
struct ScaleShift {        // y = scale * x + shift, elementwise with constants
  float scale = 1.f, shift = 0.f;
};
using Op = std::variant<Input, Conv2d, BatchNorm, Relu, Add, ShortcutA, GlobalAvgPool, Linear,
                        Pool2d, Concat, Dropout, Sigmoid, Mul, ScaleShift>;

const char* op_name(const Op& op);

// ---- Parameters and buffers ----
enum class Role { weight, bias, bn_gamma, bn_beta, running_mean, running_var };
enum class Init { kaiming_normal_fan_out, uniform_fan_in, ones, zeros, constant,
                  truncated_normal };

struct Param {
  std::string name;   // torchvision spelling, e.g. "layer1.0.conv1.weight"
  Shape shape;
  Role role;
  Init init;
  int64_t fan_in = 0, fan_out = 0;
  float init_value = 0.f;  // Init::constant: the value; Init::truncated_normal: the stddev
  // Buffers (running statistics) are state, not parameters: no gradient, not counted.
  bool trainable() const { return role != Role::running_mean && role != Role::running_var; }
};

struct Value {
  Shape shape;                 // per sample
  int producer = -1;           // node id
  std::vector<int> consumers;  // node ids, in execution order
};

struct Node {
  std::string name;
  Op op;
  std::vector<int> inputs;  // value ids
  int output = -1;          // value id
  std::vector<int> params;  // param ids, in the order the op defines (weight, bias, ...)
};

struct Graph {
  std::vector<Node> nodes;
  std::vector<Value> values;
  std::vector<Param> params;
  int input = -1, output = -1;
  // Further outputs trained alongside the main one (Inception's auxiliary classifier).
  // Inference programs compute only what `output` needs.
  std::vector<int> aux_outputs;

  const Shape& input_shape() const { return values[input].shape; }
  const Shape& output_shape() const { return values[output].shape; }
  int64_t param_count() const;  // trainable parameters, as torchvision counts them
  int64_t macs() const;         // multiply-adds per sample (conv + linear)
  int find_param(const std::string& name) const;  // -1 when absent
};

// What the planning passes (graph/passes/) know of an op, beside its shape rule;
// they read these, never the op's type.
struct OpTraits {
  int params = 0;                      // parameters and buffers it uses (weight, bias, BN's four)
  bool backward_reads_output = false;  // its backward reads its own output (ReLU, sigmoid: from y)
  // Its backward reads neither its output nor a workspace tied to it, and it writes
  // its output whole: a later op may write over that output in place (conv, BN).
  bool output_overwritable = false;
  bool absorbs_epilogue = false;    // inference: can take the ops after it into itself (conv)
  bool per_channel_affine = false;  // inference: y[c] = a[c] x[c] + b[c], foldable into a conv before it (BN)
  bool activation = false;          // ReLU: a conv or BN can apply it to its own output
  bool fuses_activation = false;    // runs a following activation as part of itself (BN)
  bool sum = false;                 // y = a + scale * b: a conv can write onto b's buffer; may run in place
};
OpTraits traits(const Op& op);

// Shape and cost rules, one per op.
int64_t pool_out(int64_t in, const Pool2d& p);  // output height (or width) of a pooling
Shape infer_shape(const Op& op, const std::vector<Shape>& inputs);
int64_t node_macs(const Graph& g, const Node& n);

}  // namespace incres::graph
