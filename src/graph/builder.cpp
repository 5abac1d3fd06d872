#include "graph/builder.h"

#include "core/error.h"

namespace incres::graph {

Builder::Builder(Shape input) {
  graph_.values.push_back(Value{std::move(input)});
  graph_.input = 0;
}

Builder::Scope Builder::scope(const std::string& name) {
  scopes_.push_back(name);
  return Scope(*this);
}

std::string Builder::qualified(const std::string& name) const {
  std::string q;
  for (const auto& s : scopes_) q += s + ".";
  return q + name;
}

int Builder::add_node(std::string name, Op op, std::vector<int> inputs) {
  std::vector<Shape> shapes;
  for (int v : inputs) shapes.push_back(graph_.values.at(v).shape);
  Shape out;
  try {
    out = infer_shape(op, shapes);
  } catch (const Error& e) {
    fail(name, ": ", e.what());
  }
  int node = static_cast<int>(graph_.nodes.size());
  int value = static_cast<int>(graph_.values.size());
  graph_.values.push_back(Value{std::move(out), node, {}});
  for (int v : inputs) graph_.values[v].consumers.push_back(node);
  graph_.nodes.push_back(Node{std::move(name), std::move(op), std::move(inputs), value, {}});
  return value;
}

int Builder::add_param(int node, const std::string& name, Shape shape, Role role, Init init,
                       int64_t fan_in, int64_t fan_out) {
  std::string full = graph_.nodes[node].name + "." + name;
  INCRES_CHECK(graph_.find_param(full) < 0, "duplicate parameter name ", full);
  graph_.params.push_back(Param{full, std::move(shape), role, init, fan_in, fan_out});
  int id = static_cast<int>(graph_.params.size()) - 1;
  graph_.nodes[node].params.push_back(id);
  return id;
}

int Builder::conv(int x, const Conv2d& a, const std::string& name) {
  int64_t C = shape(x)[0];
  int y = add_node(qualified(name), a, {x});
  int node = graph_.values[y].producer;
  int64_t fan_in = C * a.R * a.S, fan_out = a.K * a.R * a.S;
  // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv.
  int w = add_param(node, "weight", Shape{a.K, C, a.R, a.S}, Role::weight, weight_init_, fan_in,
                    fan_out);
  graph_.params[w].init_value = weight_init_value_;
  if (a.bias) add_param(node, "bias", Shape{a.K}, Role::bias, Init::uniform_fan_in, fan_in);
  return y;
}

int Builder::batchnorm(int x, const std::string& name, BatchNorm attrs) {
  int64_t C = shape(x)[0];
  int y = add_node(qualified(name), attrs, {x});
  int node = graph_.values[y].producer;
  add_param(node, "weight", Shape{C}, Role::bn_gamma, Init::ones);
  add_param(node, "bias", Shape{C}, Role::bn_beta, Init::zeros);
  add_param(node, "running_mean", Shape{C}, Role::running_mean, Init::zeros);
  add_param(node, "running_var", Shape{C}, Role::running_var, Init::ones);
  return y;
}

int Builder::relu(int x) { return add_node(qualified("relu"), Relu{}, {x}); }
int Builder::add(int a, int b, float scale) { return add_node(qualified("add"), Add{scale}, {a, b}); }
int Builder::shortcut_a(int x, int64_t K, int stride) {
  return add_node(qualified("shortcut"), ShortcutA{K, stride}, {x});
}
int Builder::global_avg_pool(int x) { return add_node(qualified("avgpool"), GlobalAvgPool{}, {x}); }

int Builder::linear(int x, int64_t out, const std::string& name, bool bias) {
  int64_t in = shape(x)[0];
  int y = add_node(qualified(name), Linear{out, bias}, {x});
  int node = graph_.values[y].producer;
  // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
  int w = add_param(node, "weight", Shape{out, in}, Role::weight, linear_init_, in, out);
  graph_.params[w].init_value = weight_init_value_;
  if (bias) add_param(node, "bias", Shape{out}, Role::bias, Init::uniform_fan_in, in);
  return y;
}

int Builder::max_pool(int x, int kernel, int stride, int pad, bool ceil_mode) {
  return add_node(qualified("maxpool"), Pool2d{Pool2d::max, kernel, stride, pad, ceil_mode}, {x});
}
int Builder::avg_pool(int x, int kernel, int stride, int pad, bool ceil_mode, bool count_include_pad) {
  return add_node(qualified("avgpool"),
                  Pool2d{Pool2d::avg, kernel, stride, pad, ceil_mode, count_include_pad}, {x});
}
int Builder::concat(const std::vector<int>& xs) { return add_node(qualified("concat"), Concat{}, xs); }
int Builder::dropout(int x, float p) { return add_node(qualified("dropout"), Dropout{p}, {x}); }
int Builder::sigmoid(int x) { return add_node(qualified("sigmoid"), Sigmoid{}, {x}); }
int Builder::mul(int a, int b) { return add_node(qualified("mul"), Mul{}, {a, b}); }
int Builder::scale_shift(int x, float scale, float shift) {
  return add_node(qualified("scale_shift"), ScaleShift{scale, shift}, {x});
}

void Builder::set_weight_init(Init init, float value) {
  weight_init_ = init;
  linear_init_ = init == Init::kaiming_normal_fan_out ? Init::uniform_fan_in : init;
  weight_init_value_ = value;
}

void Builder::init_param(const std::string& name, Init init, float value) {
  int id = graph_.find_param(qualified(name));
  INCRES_CHECK(id >= 0, "init_param: no parameter named ", qualified(name));
  graph_.params[id].init = init;
  graph_.params[id].init_value = value;
}

void Builder::expect(int v, const Shape& s, const char* where) const {
  INCRES_CHECK(shape(v) == s, where, ": expected shape ", s.str(), ", built ", shape(v).str());
}

Graph Builder::finish(int output, std::vector<int> aux_outputs) {
  graph_.output = output;
  graph_.aux_outputs = std::move(aux_outputs);
  return std::move(graph_);
}

}  // namespace incres::graph
