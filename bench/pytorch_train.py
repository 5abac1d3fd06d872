#!/usr/bin/env python3
"""PyTorch timing, the peer of `incres bench MODEL --mode train|infer [--precision
bf16]`: synthetic data, untimed warm-up steps, then the median of timed steps, a fixed
number of threads. train: forward, cross-entropy, backward, SGD step with momentum
0.9. infer: eval mode, no_grad. --precision bf16: torch.autocast('cpu', bfloat16)
(oneDNN's bf16 kernels under PyTorch), channels_last memory format, as PyTorch's CPU
performance guide recommends.
Models: torchvision's resnet50 and inception_v3 (without the auxiliary head), random
weights; the CIFAR ResNets (resnet20, resnet56, ...) of bench/pytorch_cifar_resnet.py.
Prints one JSON line, with max_rss_mb: the peak resident memory of this whole
process (interpreter and torch included), read at the end.

Run with Debian's Python (/usr/bin/python3, package python3-torch)."""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

import pytorch_cifar_resnet

IMAGENET = {  # name: (constructor, default image size)
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), 224),
    "inception_v3": (lambda: torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True), 299),
}


def build(name):
    """The model, its number of classes and its default image size."""
    if name in IMAGENET:
        make, image = IMAGENET[name]
        return make(), 1000, image
    return pytorch_cifar_resnet.build(name), 10, 32


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="resnet50 / inception_v3 / resnet20 / resnet56 / ...")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image", type=int, help="input height = width (default: the model's)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["train", "infer"], default="train")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, classes, image = build(a.model)
    image = a.image or image
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, image, image)
    y = torch.randint(0, classes, (a.batch,))
    bf16 = a.precision == "bf16"
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    model.train(a.mode == "train")

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if a.mode == "infer":
                with torch.no_grad():
                    model(x)
                return
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x).float(), y).backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"engine": "pytorch", "peer": f"pytorch {torch.__version__}", "model": a.model, "mode": a.mode,
                      "precision": a.precision,
                      "batch": a.batch, "image": image, "threads": torch.get_num_threads(), "iters": a.iters,
                      "images_per_sec": a.batch / med, "median_ms": med * 1e3,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
