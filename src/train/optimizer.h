// Optimizers over the trainable parameters of a ParamStore, behind one interface so
// that the trainer and checkpoints treat them alike:
//   Sgd      SGD with momentum in PyTorch's form (torch.optim.SGD, dampening 0): the
//            ResNet papers' recipe.
//   RmsProp  RMSProp in TensorFlow's form (tf.compat.v1.train.RMSPropOptimizer): the
//            Inception papers' recipe (decay 0.9, epsilon 1.0, momentum 0.9).
// And gradient clipping by global norm, which runs between backward and step().
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "graph/graph.h"
#include "graph/params.h"

namespace incres::train {

// Weight decay is L2 regularisation folded into the gradient, d = g + wd * p, before
// the update; both optimizers share it.
struct DecayOptions {
  double weight_decay = 0;
  // No weight decay on BatchNorm gamma/beta and on biases (Goyal et al. 2017,
  // "Accurate, Large Minibatch SGD", Sec. 5.1 regularises weights only; TF-slim's
  // Inception scopes put a regulariser on conv and FC weights only).
  bool no_decay_bn_bias = false;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update with learning rate lr (finite, >= 0) from the gradients in
  // store.grads. Buffers (BN running statistics: empty grads) are left untouched.
  virtual void step(double lr) = 0;
  // "sgd" or "rmsprop"; checkpoints record it so a resume cannot mix them up.
  virtual const char* name() const = 0;

  // Per-parameter state in named slots ("momentum"; "rms" and "momentum"), each one
  // tensor per graph param (an empty Tensor for BN running statistics). Checkpoints
  // store slot s of param p as "optimizer.<s>.<p>". A loader may overwrite the
  // tensors; step() checks that each still has its parameter's element count.
  size_t num_slots() const { return slots_.size(); }
  const std::string& slot_name(size_t k) const { return slots_[k].name; }
  std::vector<Tensor>& slot(size_t k) { return slots_[k].tensors; }
  const std::vector<Tensor>& slot(size_t k) const { return slots_[k].tensors; }

 protected:
  // Binds to `store`, which must outlive the optimizer and match `g` (one tensor per
  // graph param, same element counts); `who` prefixes error messages.
  Optimizer(const graph::Graph& g, graph::ParamStore& store, const char* who, DecayOptions decay);
  // A slot with one tensor per trainable param, every element `init`.
  void add_slot(std::string name, float init);
  // Throws unless every slot tensor of trainable param i has n elements.
  void check_state(size_t i, int64_t n) const;
  void check_lr(double lr) const;

  struct Slot {
    std::string name;
    std::vector<Tensor> tensors;
  };
  const graph::Graph* graph_;
  graph::ParamStore* store_;
  const char* who_;
  std::vector<float> decay_;  // weight decay per param (0 where exempt)
  std::vector<Slot> slots_;
};

struct SgdOptions {
  double momentum = 0.9;
  double weight_decay = 1e-4;
  bool nesterov = false;
  // Off by default: the ResNet paper decays every parameter.
  bool no_decay_bn_bias = false;
};

class Sgd final : public Optimizer {
 public:
  // Momentum buffers start at zero.
  Sgd(const graph::Graph& g, graph::ParamStore& store, SgdOptions opt);

  // For each trainable param p with gradient g:
  //   d = g + wd * p;  buf = momentum * buf + d;  d = nesterov ? d + momentum * buf : buf;
  //   p -= lr * d.
  // Starting buf at zero makes the first step equal PyTorch's buf = clone(d).
  void step(double lr) override;
  const char* name() const override { return "sgd"; }

  // The momentum buffers (slot "momentum").
  std::vector<Tensor>& state() { return slot(0); }
  const std::vector<Tensor>& state() const { return slot(0); }
  const SgdOptions& options() const { return opt_; }

 private:
  SgdOptions opt_;
};

struct RmsPropOptions {
  double decay = 0.9;     // rho, the mean-square's decay (Inception-v3 paper, Sec. 8)
  double epsilon = 1.0;   // inside the square root (Inception-v3 paper: epsilon = 1.0)
  double momentum = 0.9;  // TF-slim's train_image_classifier --rmsprop_momentum default
  // TF-slim's inception_v3_arg_scope regularises weights with 4e-5.
  double weight_decay = 4e-5;
  bool no_decay_bn_bias = true;
};

class RmsProp final : public Optimizer {
 public:
  // The mean-square accumulator starts at 1 (TF initialises its "rms" slot with
  // ones, so early steps are not divided by a tiny root), the momentum at 0.
  RmsProp(const graph::Graph& g, graph::ParamStore& store, RmsPropOptions opt);

  // TensorFlow's ApplyRMSProp kernel (tensorflow/core/kernels/training_ops.cc), with
  // d = g + wd * p:
  //   rms += (d^2 - rms) * (1 - decay)          (= decay * rms + (1 - decay) * d^2)
  //   mom  = momentum * mom + lr * d / sqrt(rms + epsilon)
  //   p   -= mom
  // The learning rate sits inside the momentum buffer, so a change of lr takes
  // effect gradually (unlike PyTorch's RMSprop, which scales the buffer by lr).
  void step(double lr) override;
  const char* name() const override { return "rmsprop"; }

  const RmsPropOptions& options() const { return opt_; }

 private:
  RmsPropOptions opt_;
};

// The L2 norm of all gradients of trainable params taken together, accumulated in
// double. If max_norm > 0 and the norm exceeds it, every gradient is scaled by
// max_norm / norm, as tf.clip_by_global_norm does (t * max_norm / max(norm, max_norm)).
// A non-finite norm scales nothing (the caller stops the run). Returns the norm
// before clipping.
double clip_grad_norm(const graph::Graph& g, graph::ParamStore& store, double max_norm);

}  // namespace incres::train
