// Images from files: decoding JPEG (libjpeg-turbo's TurboJPEG API) and PNG (libpng)
// to 8-bit RGB, and the geometric transforms of the papers' training and evaluation
// pipelines, plus mean/std normalisation to f32 CHW.
//
// Decoding follows shared/RELIABILITY.md: the format comes from the magic bytes, not
// the file name; the pixel count is checked against a cap from the header before any
// pixel buffer is allocated; a truncated or corrupt file is one incres::Error naming
// the file, and its partial pixels are never returned (libjpeg-turbo's warnings, e.g.
// "Premature end of JPEG file", are errors here).
//
// Every decoded image is RGB, whatever the file holds, the way torchvision's
// ImageFolder reads through PIL's convert("RGB"):
//   grey (JPEG or PNG, any bit depth)  -> R = G = B = grey
//   alpha (PNG RGBA / grey+alpha, tRNS) -> dropped, not composited (PIL drops it too)
//   16-bit PNG                         -> the high byte of each sample (v >> 8): as PIL
//                                          for RGB; for grey PIL clips at 255 (its
//                                          "I;16" -> "L" quirk, images turn white), we
//                                          scale the same way as RGB instead
//   palette PNG                        -> expanded through the palette
//   CMYK / YCCK JPEG                   -> converted as PIL converts CMYK to RGB,
//                                          R = (255-C)(255-K)/255 (no colour management);
//                                          with an Adobe APP14 marker the stored inks
//                                          are inverted first (Photoshop writes 0 = full
//                                          ink), as PIL reads them
//   EXIF orientation                   -> ignored, as torchvision's ImageFolder (PIL
//                                          does not transpose unless asked)
//   gamma (PNG gAMA), ICC profiles      -> ignored, as PIL does
#pragma once
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "core/rng.h"

namespace incres::data {

// An 8-bit image, rows top to bottom, pixels interleaved: height x width x channels.
struct Image {
  int64_t height = 0, width = 0, channels = 3;
  std::vector<uint8_t> pixels;  // height * width * channels bytes (HWC)

  const uint8_t* at(int64_t y, int64_t x) const { return pixels.data() + (y * width + x) * channels; }
};

struct DecodeOptions {
  // Width x height above this is refused from the header, before allocating. 2^26 =
  // 67,108,864 pixels (64 Mi, 192 MiB as RGB): ImageNet's largest is ~ 4288 x 2848.
  int64_t max_pixels = int64_t{1} << 26;
  // Files above this are refused before reading them into memory.
  int64_t max_file_bytes = int64_t{1} << 30;
};

// Decodes the JPEG or PNG file at `path` to RGB. Throws Error naming the file when it
// cannot be read, is empty, is neither JPEG nor PNG (whatever its extension), is
// truncated or corrupt, or exceeds a limit of `opts`.
Image decode_image(const std::string& path, const DecodeOptions& opts = {});

// The same for bytes already in memory; `name` stands for the file in messages.
Image decode_image(const uint8_t* data, size_t size, const std::string& name,
                   const DecodeOptions& opts = {});

// ---- Geometric transforms ----
//
// Resampling is bilinear on pixel centres (source coordinate (x + 0.5) * in/out - 0.5,
// clamped to the edge), without an antialiasing filter when shrinking: the semantics
// of torchvision's tensor Resize(antialias=False), OpenCV's INTER_LINEAR and Caffe's
// resize, not PIL's (PIL widens the filter when shrinking). Results are rounded to
// uint8 as PIL does before ToTensor. A crop of a resized image is computed directly,
// only for the pixels kept; where the scale is 1 it copies pixels exactly.
//
// The random draws come from the Rng the caller passes, always in the order documented
// per transform, so (seed, epoch, position) -> Rng(mix_key(...)) makes a crop
// reproducible and resumable (see ImageFolderLoader).

// ResNet's scale augmentation (He et al. 2015, Sec. 3.4, following Simonyan &
// Zisserman): resize so the shorter side is S, S uniform in [min_side, max_side]
// (integers), then a random size x size crop and, with `flip`, a horizontal flip
// with probability 1/2. The paper's colour augmentation (Krizhevsky's PCA lighting)
// and per-pixel mean subtraction are not done here; normalise() subtracts a
// per-channel mean instead.
// Draws: flip coin (uniform() < 0.5), S, crop top, crop left.
struct ScaleAugment {
  int64_t size = 224;
  int64_t min_side = 256, max_side = 480;
  bool flip = true;
};

// Inception's "random-sized crop" as torchvision's RandomResizedCrop implements it
// (Szegedy et al. 2015, "Going deeper", Sec. 6: patches of 8%..100% of the area with
// aspect ratio in [3/4, 4/3]): up to `tries` draws of an area fraction uniform in
// [scale_min, scale_max] and a log-uniform aspect ratio in [ratio_min, ratio_max];
// the first box that fits is placed uniformly; if none fits, the centre crop of the
// whole image clamped to the ratio range. The box is resized to size x size
// (Inception-v3/v4 train at 299) and, with `flip`, flipped with probability 1/2.
// Draws: flip coin, then per try (area, log ratio), then on success (top, left).
struct RandomResizedCrop {
  int64_t size = 224;
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  int tries = 10;
  bool flip = true;
};

// Evaluation: resize the shorter side to round(size / crop_fraction) (256 for 224;
// 342 for 299), then the central size x size crop (top = round((H - size) / 2), ties
// to even, as torchvision's CenterCrop). Draws nothing.
struct CenterCrop {
  int64_t size = 224;
  double crop_fraction = 0.875;
};

using Transform = std::variant<ScaleAugment, RandomResizedCrop, CenterCrop>;

// The side of the square a transform outputs.
int64_t output_size(const Transform& t);

// Throws Error when a transform's options are out of range (a crop larger than the
// smallest resized side, an empty scale or ratio range, a size below 1, ...).
void validate(const Transform& t);

// Applies t to img (3 channels), drawing from rng as documented above.
Image apply(const Transform& t, const Image& img, Rng& rng);

// The pieces, for tests and tools.
// Resizes so the shorter side is `side` (the longer one scaled and truncated, as
// torchvision: 500x375 -> side 256 gives 341x256).
Image resize_shorter(const Image& img, int64_t side);
// Bilinear resize of the box (top, left, h, w) of img to out_h x out_w, clamping to
// the box's edges (the crop is taken first, then resized), optionally flipped.
Image resized_crop(const Image& img, int64_t top, int64_t left, int64_t h, int64_t w, int64_t out_h,
                   int64_t out_w, bool flip = false);

// The box RandomResizedCrop picks for an image of height x width: top, left, h, w.
struct Box {
  int64_t top = 0, left = 0, height = 0, width = 0;
};
Box random_resized_crop_box(const RandomResizedCrop& t, int64_t height, int64_t width, Rng& rng);

// ---- Normalisation ----
// Writes img as f32 CHW: (pixel / 255 - mean[c]) / std[c]. mean and std hold 3 values
// in [0, 1] pixel units (torchvision's ImageNet ones are {0.485, 0.456, 0.406} and
// {0.229, 0.224, 0.225}) or are empty (0 and 1). `out` holds 3 * H * W floats.
void normalize(const Image& img, const std::vector<float>& mean, const std::vector<float>& std,
               float* out);

// Throws the Error normalize() would for these mean and std values.
void validate_normalization(const std::vector<float>& mean, const std::vector<float>& std);

// The ImageNet statistics torchvision's pretrained models expect.
inline const std::vector<float> kImageNetMean = {0.485f, 0.456f, 0.406f};
inline const std::vector<float> kImageNetStd = {0.229f, 0.224f, 0.225f};

// For `incres predict`: decodes `path`, applies CenterCrop{size, crop_fraction} and
// normalises. Returns 3 * size * size floats, CHW.
std::vector<float> load_eval_image(const std::string& path, int64_t size,
                                   const std::vector<float>& mean = kImageNetMean,
                                   const std::vector<float>& std = kImageNetStd,
                                   const DecodeOptions& opts = {}, double crop_fraction = CenterCrop{}.crop_fraction);

}  // namespace incres::data
