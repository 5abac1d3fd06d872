#!/usr/bin/python3
"""Whole-model parity of incres against PyTorch, run live (STYLE.md section 5, layer 3).

Reads the safetensors file written by tools/parity_dump (see the comment at its top
for what it holds), builds the same CIFAR net in PyTorch, loads incres's initial
parameters and buffers, replays the run (train-mode forward on the same batch,
CrossEntropyLoss with label smoothing, backward, torch.optim.SGD step, `steps` times)
and compares:
  logits, loss          the forward of step 1
  grad.<name>           every parameter's gradient from the backward of step 1
  losses                the loss of every step
  step<S>.<name>        every parameter and BatchNorm running statistic after step S

Metric, per tensor:  err(a, b) = max|a - b| / max(max|b|, TINY)
with a = incres, b = PyTorch. Normalising by the tensor's largest magnitude (not
elementwise) keeps near-zero entries of a tensor from dominating; TINY only guards an
all-zero reference. A tensor passes when err <= --tol (default 1e-4, RELIABILITY.md's
"whole networks ~1e-4 relative" for fp32).

The gate compares against PyTorch in float32. The same run is replayed in float64 too;
the table shows incres against float64 and float32 PyTorch against float64, the
float noise floor that a correct float32 engine is expected to sit near.

Only numpy and torch are used (Debian's /usr/bin/python3 has both); the safetensors
file is parsed by hand. Exit status: 0 pass, 1 parity failure, 2 bad input.

usage: /usr/bin/python3 torch_parity.py FILE [--tol 1e-4] [--show 12]
"""
import argparse
import json
import re
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TINY = 1e-12

# ---------------------------------------------------------------------------------
# safetensors, read with numpy only: 8-byte little-endian header length N, N bytes of
# JSON, then the data section; offsets in the header are relative to the data.

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: {len(blob)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n < 2 or 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} does not fit a file of {len(blob)} bytes")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + n:]
    tensors = {}
    for name, e in header.items():
        if e["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {e['dtype']}")
        dt = np.dtype(_DTYPES[e["dtype"]]).newbyteorder("<")
        begin, end = e["data_offsets"]
        count = int(np.prod(e["shape"], dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != count * dt.itemsize:
            raise ValueError(f"{path}: tensor {name}: data_offsets {begin}..{end} do not hold "
                             f"shape {e['shape']} {e['dtype']} (data section {len(data)} bytes)")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(e["shape"]).copy()
    return tensors, meta


# ---------------------------------------------------------------------------------
# The CIFAR ResNet of the ResNet paper, Sec. 4.2, with incres's (torchvision's)
# parameter names. Written here rather than imported, so the test owns its reference.

class ShortcutA(nn.Module):
    """Option A: identity on x[:, :, ::s, ::s]; the K - C new channels are zeros,
    appended after the C existing ones (incres's convention)."""

    def __init__(self, K, stride):
        super().__init__()
        self.K, self.stride = K, stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.K - x.shape[1]))


class BasicBlock(nn.Module):
    def __init__(self, C, K, stride, residual, shortcut, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(C, K, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(K, **bn)
        self.conv2 = nn.Conv2d(K, K, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(K, **bn)
        self.residual = residual
        self.shortcut = nn.Identity()  # same shape: identity, for A and B alike
        if residual and (stride != 1 or C != K):
            if shortcut == "A":
                self.shortcut = ShortcutA(K, stride)
            else:  # option B: 1x1 projection + BN, torchvision's name "downsample"
                del self.shortcut
                self.downsample = nn.Sequential(nn.Conv2d(C, K, 1, stride, 0, bias=False),
                                                nn.BatchNorm2d(K, **bn))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.residual:
            y = y + (self.downsample(x) if hasattr(self, "downsample") else self.shortcut(x))
        return F.relu(y)


class CifarResNet(nn.Module):
    """6n+2 layers: conv3x3(16)-BN-ReLU, 3 stages of n blocks (16, 32, 64 filters;
    stride 2 at the first block of stages 2 and 3), global average pool, fc."""

    def __init__(self, n, residual, shortcut, in_channels, classes, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, **bn)
        C = 16
        for i, (K, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(C, K, stride if b == 0 else 1, residual, shortcut, bn))
                C = K
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(meta):
    m = re.fullmatch(r"(resnet|plain)(\d+)", meta["model"])
    if not m or (int(m.group(2)) - 2) % 6:
        raise ValueError(f"model '{meta['model']}' is not a CIFAR resnet/plain 6n+2 net")
    bn = dict(eps=float(meta["bn_eps"]), momentum=float(meta["bn_momentum"]))
    return CifarResNet((int(m.group(2)) - 2) // 6, m.group(1) == "resnet", meta["shortcut"],
                       int(meta["in_channels"]), int(meta["classes"]), bn)


# ---------------------------------------------------------------------------------
# The run, replayed.

def replay(meta, init, x, labels, dtype):
    """Returns {name: array} with logits, loss, grad.*, losses, step<S>.* as parity_dump."""
    torch.manual_seed(0)  # nothing random is drawn; this only pins torch's own init
    model = build(meta)
    sd = model.state_dict()
    expected = {k for k in sd if not k.endswith(".num_batches_tracked")}
    if set(init) != expected:
        raise ValueError("parameter names differ between incres and the PyTorch net: "
                         f"only in incres {sorted(set(init) - expected)}, "
                         f"only in PyTorch {sorted(expected - set(init))}")
    for k in init:
        if tuple(sd[k].shape) != init[k].shape:
            raise ValueError(f"{k}: incres shape {list(init[k].shape)}, PyTorch {list(sd[k].shape)}")
    state = {k: torch.from_numpy(v) for k, v in init.items()}
    state.update({k: v for k, v in sd.items() if k.endswith(".num_batches_tracked")})
    model.load_state_dict(state, strict=True)
    model.to(dtype).train()

    xs = torch.from_numpy(x).to(dtype)
    ys = torch.from_numpy(labels.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(meta["smoothing"]))
    opt = torch.optim.SGD(model.parameters(), lr=float(meta["lr"]),
                          momentum=float(meta["momentum"]),
                          weight_decay=float(meta["weight_decay"]),
                          nesterov=meta["nesterov"] == "true")
    steps = int(meta["steps"])
    out, losses = {}, []
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        logits = model(xs)
        loss = loss_fn(logits, ys)
        loss.backward()
        losses.append(loss.item())
        if step == 1:
            out["logits"] = logits.detach().numpy().copy()
            out["loss"] = np.array([loss.item()])
            for name, p in model.named_parameters():
                out["grad." + name] = p.grad.detach().numpy().copy()
        opt.step()
    out["losses"] = np.array(losses)
    for k, v in model.state_dict().items():
        if not k.endswith(".num_batches_tracked"):
            out[f"step{steps}.{k}"] = v.detach().numpy().copy()
    return out


def err(a, b):
    """max|a - b| / max(max|b|, TINY), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), TINY))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", help="safetensors file written by parity_dump")
    ap.add_argument("--tol", type=float, default=1e-4, help="max relative error (default 1e-4)")
    ap.add_argument("--show", type=int, default=12, help="rows of the worst-tensor table")
    args = ap.parse_args()
    torch.set_num_threads(2)

    try:
        t, meta = read_safetensors(args.file)
        if meta.get("format") != "incres-parity-1":
            raise ValueError(f"{args.file}: metadata format is {meta.get('format')!r}, "
                             "expected 'incres-parity-1' (written by tools/parity_dump)")
        init = {k[len("init."):]: v for k, v in t.items() if k.startswith("init.")}
        x, labels = t["input"], t["labels"]
        ref32 = replay(meta, init, x, labels, torch.float32)
        ref64 = replay(meta, init, x, labels, torch.float64)
    except (ValueError, KeyError, OSError) as e:
        print(f"torch_parity: {e}", file=sys.stderr)
        return 2

    missing = sorted(set(ref32) - set(t))
    rows = []  # (name, vs f32, vs f64, f32 vs f64)
    for name in ref32:
        if name in t:
            rows.append((name, err(t[name], ref32[name]), err(t[name], ref64[name]),
                         err(ref32[name], ref64[name])))
    failed = [r[0] for r in rows if not r[1] <= args.tol] + missing

    print(f"torch_parity: {meta['model']} shortcut {meta['shortcut']} on incres/{meta['backend']}, "
          f"batch {meta['batch']}, {meta['image']}x{meta['image']}, {meta['steps']} SGD steps "
          f"(lr {meta['lr']}, momentum {meta['momentum']}, wd {meta['weight_decay']}), "
          f"smoothing {meta['smoothing']}; torch {torch.__version__}")
    print("  err = max|incres - torch| / max|torch| per tensor; gate: vs torch f32 <= "
          f"{args.tol:g}")
    groups = [("logits", lambda n: n == "logits"), ("loss", lambda n: n in ("loss", "losses")),
              ("grads", lambda n: n.startswith("grad.")),
              (f"step{meta['steps']} params",
               lambda n: n.startswith("step") and not n.endswith(("running_mean", "running_var"))),
              (f"step{meta['steps']} BN stats",
               lambda n: n.startswith("step") and n.endswith(("running_mean", "running_var")))]
    print(f"  {'group':<18} {'tensors':>7} {'max vs f32':>11} {'max vs f64':>11} "
          f"{'f32 vs f64':>11}  worst tensor")
    for gname, pred in groups:
        g = [r for r in rows if pred(r[0])]
        if g:
            w = max(g, key=lambda r: r[1])
            print(f"  {gname:<18} {len(g):>7} {w[1]:>11.3e} {max(r[2] for r in g):>11.3e} "
                  f"{max(r[3] for r in g):>11.3e}  {w[0]}")
    print(f"  worst {min(args.show, len(rows))} tensors:")
    for name, e32, e64, floor in sorted(rows, key=lambda r: -r[1])[:args.show]:
        mark = "FAIL" if not e32 <= args.tol else "    "
        print(f"  {mark} {name:<44} {e32:>11.3e} {e64:>11.3e} {floor:>11.3e}")
    losses = ", ".join(f"{a:.6f}/{b:.6f}" for a, b in zip(t["losses"], ref32["losses"]))
    print(f"  losses incres/torch: {losses}")

    if failed:
        print(f"torch_parity: FAIL: {len(failed)} tensors beyond {args.tol:g}"
              + (f" or missing from the file" if missing else "") + ": "
              + ", ".join(failed), file=sys.stderr)
        return 1
    print(f"torch_parity: PASS ({len(rows)} tensors within {args.tol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
