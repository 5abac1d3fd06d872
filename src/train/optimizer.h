// SGD with momentum in PyTorch's form (torch.optim.SGD, dampening 0), over the
// trainable parameters of a ParamStore.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "graph/graph.h"
#include "graph/params.h"

namespace incres::train {

struct SgdOptions {
  double momentum = 0.9;
  double weight_decay = 1e-4;
  bool nesterov = false;
  // No weight decay on BatchNorm gamma/beta and on biases (Goyal et al. 2017,
  // "Accurate, Large Minibatch SGD", Sec. 5.1 regularises weights only). Off by
  // default: the ResNet paper decays every parameter.
  bool no_decay_bn_bias = false;
};

class Sgd {
 public:
  // Binds to `store`, which must outlive the optimizer and match `g` (one tensor per
  // graph param, same element counts). Momentum buffers start at zero.
  Sgd(const graph::Graph& g, graph::ParamStore& store, SgdOptions opt);

  // One update with learning rate lr (finite, >= 0), from the gradients in
  // store.grads. For each trainable param p with gradient g:
  //   d = g + wd * p;  buf = momentum * buf + d;  d = nesterov ? d + momentum * buf : buf;
  //   p -= lr * d.
  // Starting buf at zero makes the first step equal PyTorch's buf = clone(d).
  // Buffers (running statistics: empty grads) are left untouched.
  void step(double lr);

  // Momentum buffers, one per graph param (an empty Tensor for BN running
  // statistics), for checkpoints. A loader may overwrite them; step() checks that
  // each one still has its parameter's element count.
  std::vector<Tensor>& state() { return buf_; }
  const std::vector<Tensor>& state() const { return buf_; }

  const SgdOptions& options() const { return opt_; }

 private:
  const graph::Graph* graph_;
  graph::ParamStore* store_;
  SgdOptions opt_;
  std::vector<float> decay_;  // weight decay per param (0 where exempt)
  std::vector<Tensor> buf_;
};

}  // namespace incres::train
