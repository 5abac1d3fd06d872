// Builder: models are functions that call it. Name scopes give parameters their
// torchvision names ("layer1" > "0" > "conv1" -> "layer1.0.conv1.weight"), and
// every call checks the shape rule at once, so a wrong stride fails at build time.
#pragma once
#include <string>
#include <vector>

#include "graph/graph.h"

namespace incres::graph {

class Builder {
 public:
  explicit Builder(Shape input);  // per sample, e.g. {1, 32, 32}

  // Push a name scope for the guard's lifetime.
  class Scope {
   public:
    explicit Scope(Builder& b) : b_(&b) {}
    Scope(Scope&& o) noexcept : b_(o.b_) { o.b_ = nullptr; }
    Scope(const Scope&) = delete;
    ~Scope() { if (b_) b_->scopes_.pop_back(); }
   private:
    Builder* b_;
  };
  [[nodiscard]] Scope scope(const std::string& name);

  int input() const { return graph_.input; }
  const Shape& shape(int v) const { return graph_.values[v].shape; }

  // Each call adds one node and returns its output value. `name` is the layer's
  // own name inside the current scope ("conv1", "bn1", "fc").
  int conv(int x, const Conv2d& attrs, const std::string& name);
  int conv(int x, int64_t K, int kernel, int stride, int pad, const std::string& name) {
    return conv(x, Conv2d{K, kernel, kernel, stride, pad, pad, false}, name);
  }
  int batchnorm(int x, const std::string& name, BatchNorm attrs = {});
  int relu(int x);
  int add(int a, int b, float scale = 1.f);  // a + scale * b
  int shortcut_a(int x, int64_t K, int stride);
  int global_avg_pool(int x);
  int linear(int x, int64_t out, const std::string& name, bool bias = true);
  int max_pool(int x, int kernel, int stride, int pad = 0, bool ceil_mode = false);
  int avg_pool(int x, int kernel, int stride, int pad = 0, bool ceil_mode = false,
               bool count_include_pad = true);
  int concat(const std::vector<int>& xs);
  int dropout(int x, float p);
  int sigmoid(int x);
  int mul(int a, int b);
  int scale_shift(int x, float scale, float shift);

  // Initialisation. Conv and linear weights default to torchvision's ResNet rules
  // (Kaiming normal fan-out; PyTorch's uniform for linear); a model may change the
  // rule for the weights built after the call (Inception: truncated normal), or set
  // one parameter, by its name inside the current scope ("gate.bias").
  void set_weight_init(graph::Init init, float value = 0.f);
  void init_param(const std::string& name, graph::Init init, float value = 0.f);

  // Throws unless value v has the given per-sample shape (a stage's shape check).
  void expect(int v, const Shape& s, const char* where) const;

  Graph finish(int output, std::vector<int> aux_outputs = {});

 private:
  std::string qualified(const std::string& name) const;
  int add_node(std::string name, Op op, std::vector<int> inputs);
  int add_param(int node, const std::string& name, Shape shape, Role role, Init init,
                int64_t fan_in = 0, int64_t fan_out = 0);

  Graph graph_;
  std::vector<std::string> scopes_;
  Init weight_init_ = Init::kaiming_normal_fan_out;  // conv weights
  Init linear_init_ = Init::uniform_fan_in;          // linear weights
  float weight_init_value_ = 0.f;
};

}  // namespace incres::graph
