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
  add_param(node, "weight", Shape{a.K, C, a.R, a.S}, Role::weight, Init::kaiming_normal_fan_out,
            fan_in, fan_out);
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
int Builder::add(int a, int b) { return add_node(qualified("add"), Add{}, {a, b}); }
int Builder::shortcut_a(int x, int64_t K, int stride) {
  return add_node(qualified("shortcut"), ShortcutA{K, stride}, {x});
}
int Builder::global_avg_pool(int x) { return add_node(qualified("avgpool"), GlobalAvgPool{}, {x}); }

int Builder::linear(int x, int64_t out, const std::string& name) {
  int64_t in = shape(x)[0];
  int y = add_node(qualified(name), Linear{out, true}, {x});
  int node = graph_.values[y].producer;
  // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
  add_param(node, "weight", Shape{out, in}, Role::weight, Init::uniform_fan_in, in);
  add_param(node, "bias", Shape{out}, Role::bias, Init::uniform_fan_in, in);
  return y;
}

void Builder::expect(int v, const Shape& s, const char* where) const {
  INCRES_CHECK(shape(v) == s, where, ": expected shape ", s.str(), ", built ", shape(v).str());
}

Graph Builder::finish(int output) {
  graph_.output = output;
  return std::move(graph_);
}

}  // namespace incres::graph
