#include "io/model_params.h"

#include <cstring>
#include <set>
#include <string_view>

#include "core/error.h"

namespace incres::io {
namespace {

// PyTorch's BatchNorm keeps a step counter that incres has no use for (momentum is fixed).
bool is_bn_counter(std::string_view name) {
  constexpr std::string_view suffix = ".num_batches_tracked";
  return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
}

void check_store(const graph::Graph& g, const graph::ParamStore& store, const char* fn) {
  INCRES_CHECK(store.values.size() == g.params.size(), fn, ": the ParamStore has ",
               store.values.size(), " values but the graph has ", g.params.size(),
               " params; build the store with ParamStore(graph)");
  for (size_t i = 0; i < g.params.size(); ++i)
    INCRES_CHECK(store.values[i].shape() == g.params[i].shape &&
                     store.values[i].dtype() == DType::f32 && !store.values[i].empty(),
                 fn, ": ParamStore value ", i, " ('", g.params[i].name, "') is ",
                 store.values[i].shape().str(), " ", dtype_name(store.values[i].dtype()),
                 ", the graph says ", g.params[i].shape.str(), " F32; build the store with "
                 "ParamStore(graph)");
}

// The first ten names, then how many more: a checkpoint of another model would
// otherwise list hundreds.
std::string join(const std::vector<std::string>& v) {
  constexpr size_t kShown = 10;
  std::string s;
  for (size_t i = 0; i < v.size() && i < kShown; ++i) s += (s.empty() ? "" : ", ") + v[i];
  if (v.size() > kShown) s += cat(", and ", v.size() - kShown, " more");
  return s;
}

}  // namespace

LoadReport check_params(const SafeTensors& st, const graph::Graph& g) {
  LoadReport r;
  std::set<std::string_view> wanted;
  for (const graph::Param& p : g.params) {
    wanted.insert(p.name);
    auto it = st.tensors.find(p.name);
    if (it == st.tensors.end()) {
      r.missing.push_back(p.name);
      continue;
    }
    const Tensor& t = it->second;
    if (t.shape() != p.shape || t.dtype() != DType::f32)
      r.mismatched.push_back(cat(p.name, ": expected ", p.shape.str(), " F32, file has ",
                                 t.shape().str(), " ", dtype_name(t.dtype())));
  }
  for (const auto& [name, t] : st.tensors)
    if (!wanted.count(name) && !is_bn_counter(name)) r.unexpected.push_back(name);
  return r;
}

LoadReport load_params(const SafeTensors& st, const graph::Graph& g, graph::ParamStore& store,
                       bool strict) {
  check_store(g, store, "load_params");
  LoadReport r = check_params(st, g);
  if (!r.ok(strict)) {
    // One line with every problem, so a user fixes them all in one go.
    std::string msg = "checkpoint" + (st.path.empty() ? "" : " '" + st.path + "'") +
                      " does not match the model:";
    const char* sep = " ";
    if (!r.missing.empty()) {
      msg += cat(sep, r.missing.size(), " missing (", join(r.missing), ")");
      sep = "; ";
    }
    if (strict && !r.unexpected.empty()) {
      msg += cat(sep, r.unexpected.size(), " unexpected (", join(r.unexpected), ")");
      sep = "; ";
    }
    if (!r.mismatched.empty())
      msg += cat(sep, r.mismatched.size(), " mismatched (", join(r.mismatched), ")");
    msg += "; load a checkpoint of the same model and configuration";
    if (strict && !r.unexpected.empty() && r.missing.empty() && r.mismatched.empty())
      msg += ", or load non-strict to ignore the unexpected tensors";
    fail(msg);
  }
  for (size_t i = 0; i < g.params.size(); ++i) {
    const Tensor& src = st.tensors.at(g.params[i].name);
    std::memcpy(store.values[i].raw(), src.raw(), src.nbytes());
  }
  store.changed();
  return r;
}

std::vector<std::pair<std::string, const Tensor*>> param_entries(const graph::Graph& g,
                                                                 const graph::ParamStore& store) {
  check_store(g, store, "param_entries");
  std::vector<std::pair<std::string, const Tensor*>> out;
  out.reserve(g.params.size());
  for (size_t i = 0; i < g.params.size(); ++i) out.emplace_back(g.params[i].name, &store.values[i]);
  return out;
}

}  // namespace incres::io
