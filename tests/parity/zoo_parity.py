#!/usr/bin/python3
"""incres against torchvision 0.14 on the ImageNet ResNets and Inception-v3, run live.

PyTorch builds the torchvision model with random weights (torch.manual_seed), gives
every BatchNorm random running statistics and affine parameters (so inference-mode BN
is not the identity), and writes the state_dict through tools/pth_to_safetensors.py
with the batch. tools/run_model (incres) loads both by torchvision's parameter names,
runs the model and writes its outputs; this script compares.

  --mode infer: eval-mode logits.
  --mode train: train-mode (batch statistics) logits, the gradient of every parameter
      for loss = sum(logits * dy) [+ sum(aux_logits * aux_dy)] with random dy, and the
      BN running statistics after the step. Dropout is switched off on both sides.

Metric per tensor: max|incres - torch| / max|torch| <= --tol (default 1e-4). Exit 0
pass, 1 mismatch, 2 bad input, 77 no torch (ctest: skipped).

Train mode is compared against PyTorch in float64, and a tensor passes when its error
is within --tol or within FLOOR_FACTOR (10) times PyTorch float32's own error against
float64, whichever is larger. The reason: a deep net in training mode on a small
batch is ill-conditioned in float32. Measured on inception_v3 (299x299, batch 4):
PyTorch float32 itself misses float64 by up to 1e-1 on the gradients of Mixed_7b
(ReLU units within rounding of zero flip; BN on 8x8 grids of 4 images amplifies),
while resnet18 stays near 1e-5 everywhere. A real bug moves a tensor by orders of
magnitude more than that noise. Even so, a unit that flips in incres but not in
PyTorch float32 (incres's float32 forward sits ~4x further from float64 than
PyTorch's, measured on the logits) can push a few gradients past 10x PyTorch's
noise; up to CHAOS_SHARE (3%) of the gradient tensors may do so as long as none is
above CHAOS_MAX (0.3). The forward tensors (logits, auxiliary logits, BN running
statistics) get no such allowance, and resnet18 meets 1e-4 on every tensor.

usage: /usr/bin/python3 zoo_parity.py RUN_MODEL MODEL [--image N] [--batch N]
                                      [--mode infer|train] [--tol X] [--backend cpu|ref]
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import torchvision
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from pth_to_safetensors import write_safetensors  # noqa: E402



def randomise_bn(model):
    """Random BN statistics and affine parameters, so that inference-mode BN is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64, "F64": np.float64}[e["dtype"]]
        out[name] = np.frombuffer(data[b:end], dtype=dt).reshape(e["shape"])
    return out


def build(name, aux):
    if name == "inception_v3":
        return torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=True)
    return getattr(torchvision.models, name)(weights=None)


def train_step(model, x, dy, aux_dy, aux):
    """One train-mode forward and backward; every tensor run_model writes, by its name."""
    model.train()
    out = model(x)
    logits, aux_logits = (out.logits, out.aux_logits) if aux else (out, None)
    loss = (logits * dy).sum() + ((aux_logits * aux_dy).sum() if aux else 0)
    loss.backward()
    r = {"logits": logits.detach().double().numpy()}
    if aux:
        r["aux_logits"] = aux_logits.detach().double().numpy()
    for name, p in model.named_parameters():
        r["grad." + name] = p.grad.double().numpy()
    for name, b in model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            r["state." + name] = b.double().numpy()
    return r


FLOOR_FACTOR = 10.0
CHAOS_SHARE = 0.03
CHAOS_MAX = 0.3


def err(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_model")
    ap.add_argument("model")
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--mode", choices=["infer", "train"], default="infer")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    aux = args.model == "inception_v3" and args.mode == "train"
    model = build(args.model, aux)
    randomise_bn(model)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = torch.randn(args.batch, 3, args.image, args.image)
    classes = 1000
    dy = torch.randn(args.batch, classes) / args.batch
    aux_dy = torch.randn(args.batch, classes) / args.batch

    with tempfile.TemporaryDirectory() as tmp:
        w_path, x_path, o_path = (os.path.join(tmp, f) for f in ("w.safetensors", "x.safetensors", "o.safetensors"))
        write_safetensors(w_path, model.state_dict())
        inputs = {"input": x, "dy": dy}
        if aux:
            inputs["aux_dy"] = aux_dy
        write_safetensors(x_path, inputs)
        cmd = [args.run_model, "--model", args.model, "--weights", w_path, "--input", x_path,
               "--out", o_path, "--mode", args.mode, "--backend", args.backend, "--dropout", "0"]
        if args.model == "inception_v3" and not aux:
            cmd.append("--no-aux")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout + r.stderr)
            sys.exit(2)
        got = read_safetensors(o_path)

    results, floor = [], []
    if args.mode == "infer":
        model.eval()
        with torch.no_grad():
            logits = model(x)
        results.append(("logits", err(got["logits"], logits.numpy())))
    else:
        import copy
        m64 = copy.deepcopy(model).double()
        ref = train_step(model, x, dy, aux_dy, aux)
        ref64 = train_step(m64, x.double(), dy.double(), aux_dy.double(), aux)
        for name, b in ref.items():
            results.append((name, err(got[name], ref64[name])))
            floor.append((name, err(b, ref64[name])))

    # The bound per tensor: tol, or FLOOR_FACTOR times PyTorch's own float32 error
    # where that is larger (train mode only: see the module docstring).
    noise = dict(floor)
    bound = {name: max(args.tol, FLOOR_FACTOR * noise.get(name, 0.0)) for name, _ in results}
    worst = sorted(results, key=lambda r: -r[1] / bound[r[0]])
    print(f"{args.model} {args.mode} {args.image}x{args.image} batch {args.batch} ({args.backend}): "
          f"{len(results)} tensors, worst {worst[0][0]} {worst[0][1]:.2e} (bound {bound[worst[0][0]]:.1e})")
    if floor:
        over = sum(1 for n, e in results if e > args.tol)
        print(f"  {over} tensors above {args.tol:.0e}, compared with {FLOOR_FACTOR:g}x PyTorch float32's own "
              f"error against float64")
    for name, e in worst[:int(os.environ.get("SHOW", "5"))]:
        print(f"  {e:.2e}  {name}" + (f"   (torch float32 vs float64: {noise[name]:.2e})" if name in noise else ""))
    bad = [r for r in results if not r[1] <= bound[r[0]]]
    if args.mode == "train" and bad:
        # Gradients only: a ReLU unit that lands on the other side of zero in incres
        # but not in PyTorch float32 moves the gradients below it by more than 10x
        # PyTorch's own noise. Tolerated when rare (CHAOS_SHARE of the gradients at
        # most), never above CHAOS_MAX, and never for the forward tensors.
        forward = [r for r in bad if not r[0].startswith("grad.")]
        grads = [r for r in results if r[0].startswith("grad.")]
        if not forward and len(bad) <= CHAOS_SHARE * len(grads) and all(e <= CHAOS_MAX for _, e in bad):
            print(f"  {len(bad)} of {len(grads)} gradients above their bound, all below {CHAOS_MAX:g}: "
                  "tolerated as float32 ReLU flips (see the module docstring)")
            bad = []
    if bad:
        print(f"FAIL: {len(bad)} tensors over tolerance")
        sys.exit(1)


if __name__ == "__main__":
    main()
