// incres, embedded in a C++ program: load a trained model, classify images, train it
// a few steps, save it. The whole API is this header (and <incres/error.h>, which it
// includes); it exposes no oneDNN, nlohmann or other internal type.
//
//   find_package(incres REQUIRED)
//   target_link_libraries(app PRIVATE incres::incres)
//
//   incres::Model m = incres::Model::load("runs/r20/last.safetensors");
//   for (const incres::Prediction& p : m.classify({"shoe.png"}, 3)[0])
//     std::printf("%s %.3f\n", p.name.c_str(), p.probability);
//
// Every failure (a missing file, a checkpoint that does not fit, a bad argument)
// throws incres::Error with the one-line message `incres` itself prints. A Model is
// not thread-safe: use one per thread (they may share nothing but the files).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <incres/error.h>

namespace incres {

enum class Precision { fp32, bf16 };

struct Options {
  // Compute threads of this model's calls; 0: OMP_NUM_THREADS if set, else every core.
  int threads = 0;
  // Inference arithmetic. bf16: feature maps and conv weights in bfloat16, accumulation,
  // BN statistics and the classifier in fp32 (logits within ~1% of fp32; on AMX 4-5x
  // faster). Needs a CPU with AVX512-BF16 or AMX: elsewhere an Error names the missing
  // feature. train_step trains in fp32.
  Precision precision = Precision::fp32;
  // Inference runs the stride-1 3x3, 1x3/3x1 and 1x7/7x1 convs as Winograd
  // convolutions where that pays (within ~3e-5 relative of a direct conv); false:
  // every conv direct.
  bool winograd = true;
};

struct Info {
  std::string model;      // the architecture's registry name ("resnet50")
  int64_t params = 0;     // learnable parameters
  int64_t macs = 0;       // multiply-accumulates of one image's forward pass
  int64_t channels = 0, height = 0, width = 0;  // one input image
  int64_t classes = 0;
  // What an image file is normalised with before it is fed: per channel,
  // (pixel / 255 - mean) / std. A checkpoint's recorded values, else ImageNet's.
  std::vector<float> mean, std;
  std::vector<std::string> class_names;  // empty when the model does not record them
};

struct Prediction {
  int64_t index = 0;       // class index
  double probability = 0;  // softmax of the logits
  std::string name;        // the class name, or "" when the model records none
};

// A few steps of training in place (SGD with momentum, BN in training mode, softmax
// cross-entropy): fine-tuning from a program, not a replacement for `incres train`.
struct TrainOptions {
  double lr = 0.01;
  double momentum = 0.9;
  double weight_decay = 1e-4;
  double label_smoothing = 0;
  double aux_weight = 0.4;  // Inception-v3's auxiliary classifier, when the model has one
};

class INCRES_API Model {
 public:
  // A checkpoint written by `incres train` (or Model::save): its architecture,
  // normalisation and class names, and its moving average of the weights where it
  // keeps one.
  static Model load(const std::string& checkpoint, const Options& options = {});
  // Parameters only (a torchvision or timm state_dict converted by
  // tools/pth_to_safetensors.py), for the architecture `model` (`incres models`) with
  // options as `incres info MODEL --help` names them, without the dashes:
  // {{"shortcut", "B"}, {"image", "128"}, {"classes", "10"}, {"in-channels", "1"},
  // {"width", "0.5"}, {"aux", "false"}, ...}. Normalisation: ImageNet's for 3-channel
  // models, mean 0 and std 1 otherwise.
  static Model load(const std::string& weights, const std::string& model,
                    const std::map<std::string, std::string>& arch = {}, const Options& options = {});
  // A new model, initialised as `incres train` initialises it (He et al. for convs,
  // BN at 1 and 0), to train from scratch with train_step. Normalisation: ImageNet's
  // for 3-channel models, mean 0 and std 1 otherwise.
  static Model create(const std::string& model, const std::map<std::string, std::string>& arch = {},
                      uint64_t seed = 0, const Options& options = {});

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const Info& info() const;
  void set_threads(int threads);    // as Options::threads
  void set_precision(Precision p);  // as Options::precision

  // n images, n x channels x height x width floats in NCHW order, already normalised.
  // Returns n x classes logits, row-major.
  std::vector<float> logits(const float* images, int64_t n);
  // The top classes of each of n images, most probable first.
  std::vector<std::vector<Prediction>> classify(const float* images, int64_t n, int top = 5);
  // Image files (JPEG, PNG; 3-channel models): decoded, resized and centre-cropped to
  // the input, and normalised, as `incres predict` does.
  std::vector<std::vector<Prediction>> classify(const std::vector<std::string>& files, int top = 5);

  // One optimizer step on n labelled images (normalised, as for logits()). Returns the
  // batch's loss before the step. Training continues from the trained weights, not from
  // a checkpoint's moving average; from the first step on, inference uses them too.
  double train_step(const float* images, const int32_t* labels, int64_t n, const TrainOptions& options = {});
  // A checkpoint `incres eval`, `predict`, `export` and Model::load read (weights,
  // BN statistics, architecture, normalisation, class names; no optimizer state).
  void save(const std::string& checkpoint) const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The registered architectures' names, as `incres models` lists them.
INCRES_API std::vector<std::string> model_names();

}  // namespace incres
