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
struct Add {};             // y = a + b
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
using Op = std::variant<Input, Conv2d, BatchNorm, Relu, Add, ShortcutA, GlobalAvgPool, Linear>;

const char* op_name(const Op& op);

// ---- Parameters and buffers ----
enum class Role { weight, bias, bn_gamma, bn_beta, running_mean, running_var };
enum class Init { kaiming_normal_fan_out, uniform_fan_in, ones, zeros };

struct Param {
  std::string name;   // torchvision spelling, e.g. "layer1.0.conv1.weight"
  Shape shape;
  Role role;
  Init init;
  int64_t fan_in = 0, fan_out = 0;
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

  const Shape& input_shape() const { return values[input].shape; }
  const Shape& output_shape() const { return values[output].shape; }
  int64_t param_count() const;  // trainable parameters, as torchvision counts them
  int64_t macs() const;         // multiply-adds per sample (conv + linear)
  int find_param(const std::string& name) const;  // -1 when absent
};

// Shape and cost rules, one per op.
Shape infer_shape(const Op& op, const std::vector<Shape>& inputs);
int64_t node_macs(const Graph& g, const Node& n);

}  // namespace incres::graph
