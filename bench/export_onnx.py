#!/usr/bin/env python3
"""Exports torchvision's resnet50 or inception_v3 (random weights, eval mode: batch
norm uses its running statistics) to ONNX with a static batch, for bench/ort_infer.mjs.
The file is cached: bench/.cache/MODEL-bBATCH-IMAGE.onnx is written once and reused.
Prints its path. Needs no `onnx` package (torch 1.13 serialises the graph itself).

Run with Debian's Python (/usr/bin/python3, package python3-torch)."""
import argparse
import os
import sys

import torch
import torchvision

DEFAULT_IMAGE = {"resnet50": 224, "inception_v3": 299}


def build(name):
    if name == "inception_v3":
        # Without the auxiliary head, as `incres bench inception_v3 --no-aux`.
        return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    return torchvision.models.resnet50(weights=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=sorted(DEFAULT_IMAGE), required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image", type=int, help="input height = width (default: 224 resnet50, 299 inception_v3)")
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"))
    ap.add_argument("--force", action="store_true", help="export again even if the file exists")
    a = ap.parse_args()
    image = a.image or DEFAULT_IMAGE[a.model]
    path = os.path.join(a.out_dir, f"{a.model}-b{a.batch}-{image}.onnx")
    if a.force or not os.path.exists(path):
        os.makedirs(a.out_dir, exist_ok=True)
        torch.manual_seed(0)
        model = build(a.model).eval()
        tmp = path + f".tmp{os.getpid()}"  # a killed export leaves no half file under the cached name
        with torch.no_grad():
            torch.onnx.export(model, torch.randn(a.batch, 3, image, image), tmp, opset_version=a.opset,
                              input_names=["input"], output_names=["logits"], do_constant_folding=True)
        os.replace(tmp, path)
        print(f"export_onnx: wrote {path}", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()
