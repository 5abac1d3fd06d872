// The training loop: data -> Program forward -> loss -> backward -> gradient
// clipping -> optimizer (SGD or RMSProp) -> moving average of the weights, with the
// schedule, evaluation every epoch, metrics as JSON lines, checkpoints and resume.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/loss.h"
#include "backend/program.h"
#include "data/batch_source.h"
#include "data/dataset.h"
#include "data/image_folder.h"
#include "data/loader.h"
#include "models/models.h"
#include "dist/communicator.h"
#include "train/loss.h"

namespace incres::train {

struct TrainConfig {
  std::string model = "resnet20";
  // "" and 0: the model's own (its registry defaults: shortcut A for the CIFAR
  // ResNets, B for the pre-activation and ImageNet ones; 32x32 input for CIFAR nets,
  // 299x299 for Inception). Images are zero-padded to the input size.
  std::string shortcut;
  int64_t image = 0;
  bool aux = true;  // Inception-v3's auxiliary classifier (trained with aux_weight)
  // Further architecture options by name, applied with models::set_option in order:
  // {"unit", "full-preact"}, {"width", "0.5"}, {"stride", "v1"} ...
  std::vector<std::pair<std::string, std::string>> model_options;
  // fashion-mnist[:DIR] | cifar10:DIR | cifar100:DIR | imagefolder:DIR (DIR/train and
  // DIR/val, one sub-folder per class, decoded on the fly by data::ImageFolderLoader)
  std::string data = "fashion-mnist";
  // Use only N images (0 = all): the first N of an in-memory dataset; of an image
  // folder, whose files are sorted by class, N spread evenly over the file list.
  int64_t train_limit = 0, test_limit = 0;
  bool skip_bad = false;  // image folders: log, count and skip files that fail to decode
  int64_t epochs = 0, iters = 0;  // length of the run: iterations win when both are set
  int64_t batch = 128;
  // The defaults below are the "resnet" recipe; recipe_defaults("inception") gives the
  // other one. `recipe` only records which one the run started from.
  std::string recipe = "resnet";
  // Schedule: the ResNet paper's CIFAR recipe by default (lr 0.1, /10 at 50% and 75%).
  std::string schedule = "multistep";  // multistep | exp | cosine | onecycle | constant
  double lr = 0.1;
  std::string milestones;  // "32000,48000" or "91e,136e"; empty = 50% and 75% of the run
  double gamma = 0.1;
  double decay_rate = 0.94, decay_epochs = 2;  // exp: lr * rate every decay_epochs (staircase)
  int64_t warmup_iters = 0;
  double warmup_lr = 0.01;
  std::string warmup_kind = "constant";
  std::string optimizer = "sgd";  // sgd (PyTorch's form) | rmsprop (TensorFlow's form)
  double momentum = 0.9, weight_decay = 1e-4;  // both optimizers
  bool nesterov = false, no_decay_bn_bias = false;
  double rmsprop_decay = 0.9, rmsprop_epsilon = 1.0;
  double clip_norm = 0;   // clip gradients to this global norm; 0 = no clipping
  double ema_decay = 0;   // evaluate on a moving average of the weights; 0 = none
  double aux_weight = 0.4;  // weight of auxiliary classifiers' losses (Inception-v3's released code)
  double label_smoothing = 0;
  bool augment = true;  // pad-4 random crop + horizontal flip
  uint64_t seed = 0;
  int workers = 2;
  std::string backend = "cpu";
  // fp32 | bf16 (backend::Precision: feature maps and conv operands in bf16; master
  // weights, optimizer and moving-average state, BN statistics and the loss in fp32).
  std::string precision = "fp32";
  // Data-parallel training (mpirun -np N incres train ...; docs/distributed.md). `batch`
  // is the global batch, split evenly over the N processes; `ranks` is N, as the run
  // found it (recorded, so that a resume with another N is refused).
  int ranks = 1;
  bool sync_bn = false;       // BatchNorm statistics over the global batch, not each process's share
  double comm_timeout = 60;   // seconds a collective may wait for the other processes
  std::string out_dir;       // checkpoints and metrics; empty = write nothing
  std::string resume;        // a checkpoint to continue from
  // Resume even where the checkpoint records other settings (each change is logged);
  // without it such a resume is refused, listing them.
  bool force_resume = false;
  // On a non-finite loss or gradient: "stop" (an Error), or "rollback": reload the last
  // good checkpoint, skip the batch that diverged and go on, at most max_rollbacks
  // times, each logged (and a metrics row {"event": "rollback", ...}).
  std::string on_nonfinite = "stop";
  int max_rollbacks = 3;
  int64_t stop_after = 0;    // stop after this step (checkpointing) as if interrupted; 0 = no
  // Also evaluate, log a metrics row and checkpoint every N steps, not only at the end
  // of each epoch (curves against iterations of short runs); 0 = at epoch ends only.
  int64_t eval_every = 0;
  bool progress = true;
};

nlohmann::json to_json(const TrainConfig& c);
// The fields to_json wrote; keys it lacks (an older incres) keep TrainConfig's defaults.
TrainConfig config_from_json(const nlohmann::json& j);

// What a run records in its checkpoint's metadata ("config"): its configuration as
// resolved (the shortcut and input size its model was built with), and what `incres
// eval` and `incres predict` need without the training data.
struct RunRecord {
  TrainConfig config;
  int64_t in_channels = 0, classes = 0;  // 0: not recorded (an older checkpoint)
  std::vector<float> mean, std;          // the input normalisation; empty: not recorded
  std::vector<std::string> class_names;
};
nlohmann::json to_json(const RunRecord& r);
// Reads what to_json(RunRecord) wrote, also from older checkpoints: those written
// before the input size was recorded were all 32x32 CIFAR nets with shortcut A.
RunRecord run_record_from_json(const nlohmann::json& j);
// The record in a checkpoint file's metadata; an Error naming the file when it holds none.
RunRecord read_run_record(const std::string& checkpoint);

// The recipes, as TrainConfig defaults for the fields they govern (the optimizer and
// its settings, the schedule, clipping, moving average, label smoothing, aux weight):
//   resnet     He et al. 2016: SGD momentum 0.9, weight decay 1e-4 on every
//              parameter, lr 0.1 divided by 10 at 50% and 75% of the run.
//   inception  Szegedy et al. 2016 (Inception-v3, Sec. 8) as TF-slim trains it:
//              RMSProp in TF's form (decay 0.9, epsilon 1.0, momentum 0.9), lr 0.045
//              x 0.94 every 2 epochs, clipping at global norm 2.0, label smoothing
//              0.1, aux loss weight 0.4, evaluation on a moving average of the weights
//              (decay 0.9999), weight decay 4e-5 on conv and FC weights only
//              (inception_v3_arg_scope's weights_regularizer; BN and biases are not
//              regularised there).
// Throws on an unknown name.
TrainConfig recipe_defaults(const std::string& recipe);
// Applies a recipe to `c`: every field the recipe governs takes the recipe's value,
// except those whose flag (as the command line spells it: "--lr", "--ema") `given`
// reports as set explicitly; `c.recipe` records the recipe. Throws on an unknown name.
void apply_recipe(TrainConfig& c, const std::string& recipe,
                  const std::function<bool(const char* flag)>& given = {});
// "inception" for the Inception family (names starting with "inception"), "resnet"
// for everything else.
std::string default_recipe(const std::string& model);

struct EvalResult {
  int64_t count = 0;
  double loss = 0, error = 0, top5_error = 0;  // error in percent
  double ece = 0;  // expected calibration error, 15 bins, in percent (train/loss.h)
};

struct TrainResult {
  int64_t steps = 0;
  double train_loss = 0, train_error = 0;  // the main output's loss and error
  double grad_norm = 0;  // the last epoch's mean global gradient norm, before clipping
  EvalResult test;
  double images_per_sec = 0;
  int64_t bad_images = 0;  // image folders with skip_bad: files skipped (train and val)
  int64_t params = 0, macs = 0;  // of the model trained (MACs of one image's forward pass)
  int rollbacks = 0;  // divergence rollbacks done
  int ranks = 1;      // processes that trained it (data-parallel)
  // Data-parallel: the mean seconds per step the gradient exchange was still running
  // after backward ended (not hidden behind it), over the last span.
  double exchange_exposed = 0;
  bool already_finished = false;  // resumed from a checkpoint at the run's last step: nothing done
};

struct DataPair {
  data::Dataset train, test;
};
// "fashion-mnist", "fashion-mnist:/dir", "cifar10:/dir", "cifar100:/dir".
DataPair load_data(const std::string& spec);

// The configuration a run builds `model` with: the model's registry defaults (its
// units, shortcut, input size), the dataset's channels and classes, and `shortcut`
// and `image` where given ("" / 0 keep the model's); aux = false drops Inception-v3's
// auxiliary classifier; `options` go through models::set_option.
models::ModelConfig model_config(const std::string& model, const std::string& shortcut, int64_t image,
                                 bool aux, int64_t in_channels, int64_t classes,
                                 const std::vector<std::pair<std::string, std::string>>& options = {});

// The model a recorded run built, for data of `in_channels` and `classes` channels and
// classes (0: the recorded ones).
models::ModelConfig model_config(const RunRecord& r, int64_t in_channels = 0, int64_t classes = 0);

// The images a model of input size `image` trains on: the dataset itself when its
// images fit (the loader zero-pads them, e.g. Fashion-MNIST's 28x28 to 32x32), or,
// when the input is at least twice the images' size (Inception's 75x75 and more),
// every image resized once, bilinearly, to image - 8 so the loader's pad-4 crop
// keeps working (data::resized).
data::Dataset fit_images(const data::Dataset& ds, int64_t image);

// ---- Image folders ("imagefolder:DIR") ----

// Whether a --data spec names an image folder, and its DIR.
bool is_image_folder(const std::string& spec);
std::string image_folder_dir(const std::string& spec);

// Scans DIR/<split> ("train" or "val"), with an error naming the spec when it is
// missing. `classes`, when not empty, is the class list the split must have (the
// training split's): a differing list is an Error naming the first difference.
data::ImageFolder scan_split(const std::string& spec, const std::string& split,
                             const std::vector<std::string>& classes = {});

// At most n files of a folder (0 = all), spread evenly over its file list (which is
// sorted by class, so every class keeps its share).
data::ImageFolder limit_files(const data::ImageFolder& f, int64_t n);

// The transform of a recipe for a model input of `image` x `image`:
//   resnet     training: ScaleAugment, the shorter side uniform in [256, 480] scaled
//              by image/224 ([37, 69] for 32), a random crop and flip (He et al.
//              2015, Sec. 3.4);
//   inception  training: RandomResizedCrop(image) and flip (Szegedy et al. 2015);
//   both       evaluation (and training with augment = false): CenterCrop(image),
//              the shorter side resized to image / 0.875 first.
data::Transform image_transform(const std::string& recipe, int64_t image, bool training, bool augment);

// ImageFolderLoader options for a run: the recipe's transform, ImageNet mean and std
// (data::kImageNetMean/Std), shuffle and drop_last for training only.
data::ImageLoaderOptions image_loader_options(const std::string& recipe, int64_t image, int64_t batch,
                                              bool training, bool augment, uint64_t seed, int workers,
                                              bool skip_bad);

// An in-memory dataset made ready for a model of input `image`: the splits cut to
// their limits (0 = all) first, then fitted (fit_images), so a large input costs only
// the images used. The normalisation is the whole training set's per-channel mean and
// std (also when training on a subset), of its pixels as stored, before any resize, so
// that no image but those used is touched; a checkpoint records it.
struct FittedData {
  data::Dataset train, test;
  std::vector<float> mean, std;
};
FittedData fit_data(DataPair data, int64_t image, int64_t train_limit, int64_t test_limit);

// Loader options that turn a fitted split's images into a model's input: Fashion-MNIST's
// 28x28 is zero-padded to 32x32 for the CIFAR networks; normalisation by d's mean and std.
data::LoaderOptions loader_options(const FittedData& d, int64_t image, int64_t batch, bool training, bool augment,
                                   uint64_t seed, int workers);

// The losses of a training step over every output of a program: output 0 is the
// main classifier, outputs 1.. the auxiliary ones (Inception-v3's), each K logits per
// image. Each gets softmax cross-entropy with the same label smoothing; the step's
// loss is main + aux_weight * (sum of the auxiliary losses), so each auxiliary
// gradient is scaled by aux_weight. With aux_weight 0 the auxiliary losses are not
// computed and backward gets null for them (no gradient reaches those heads).
// The gradient buffers are allocated once, here, not per step.
class OutputLosses {
 public:
  // Throws unless every output of `g` holds K values per image.
  // The loss runs on `backend` ("cpu": oneDNN; "ref": the reference kernel).
  OutputLosses(const graph::Graph& g, int64_t batch, int64_t K, double smoothing, double aux_weight,
               const std::string& backend = "cpu");

  struct Result {
    LossResult main;   // the main classifier's loss and top-1 hits
    double aux = 0;    // the auxiliary losses, summed over heads, unweighted
    double total = 0;  // main.loss + aux_weight * aux
  };
  // After program.forward() on a batch of n <= batch images with these labels:
  // computes the losses and runs program.backward() with their gradients.
  Result backward(backend::Program& program, const int32_t* labels, int64_t n);

  int num_aux() const { return static_cast<int>(aux_dy_.size()); }

 private:
  int64_t K_;
  float smoothing_;
  double aux_weight_;
  std::unique_ptr<backend::Loss> loss_;  // planned once for (batch, K, smoothing)
  std::vector<float> dy_;
  std::vector<std::vector<float>> aux_dy_;
  std::vector<const float*> aux_ptrs_;  // what backward() gets: aux_dy_ or null
};

// Runs an inference program over every batch of the loader (one epoch).
// Either loader (data::Loader, data::ImageFolderLoader). Data-parallel, each process
// evaluates its shard of every batch and the counts and sums are summed across them.
EvalResult evaluate(backend::Program& program, data::BatchSource& loader, int64_t classes,
                    dist::Communicator& comm = dist::single_process());

TrainResult run_training(const TrainConfig& config);

}  // namespace incres::train
