#!/usr/bin/python3
"""Whole-model parity of incres against PyTorch, run live (STYLE.md section 5, layer 3).

Reads the safetensors file written by tools/parity_dump (its header comment lists what
the file holds), builds the same CIFAR net in PyTorch with the same parameter names,
and replays incres's run: train-mode forward on the batch, CrossEntropyLoss with label
smoothing, backward, torch.optim.SGD step, `steps` times.

Gated, each step replayed from incres's own state (params, BN running statistics and
SGD momentum buffers after the previous step, all in the file):
  logits, loss, grad.<name>   the forward and backward of step 1, from the init
  losses                      the loss of every step
  momentum<k>.<name>          SGD momentum buffer after step k
  update<k>.<name>            step<k>.<name> minus the state before step k, for every
                              param and BN running statistic (see operands())
Reported, not gated: PyTorch's own free-running run of `steps` steps from the init,
against incres's final state.

Why not gate the free-running run: a float32 ReLU net is chaotic under SGD at lr 0.1.
A pre-activation within rounding of zero (a few in 10^5 after a step) flips its ReLU
between two correct float32 runs, which moves one gradient by ~1e-2; the next step
flips dozens more. Measured on plain20 (16x16, batch 8, seed 1): PyTorch float32
against PyTorch float64, free-running, gave 0 flips at step 1, 1 at step 2 (gradient
error 7e-3) and 109 at step 3 (4.6e-1). Replaying each step from incres's state
keeps every comparison one step deep, as tight as step 1, and still checks the
optimizer, the momentum buffers and the BN running statistics at every step.

Even one step deep, incres's oneDNN backend and PyTorch put a unit on different sides
of zero in most runs (plain20 seed 1: layer2.1.relu1, z = -3.3e-6 rms,
moved grad.layer2.1.bn1.bias by 7e-2). So when a step misses the tolerance, the
replay retries with ReLU units whose |z| < FLIP_WINDOW * rms taken the other way
(resolve_flips) and keeps a flip only if it explains the difference; the flips taken
are printed. A real bug is not explained by flipping a handful of near-zero units.

Metric, per tensor:  err(a, b) = max|a - b| / max(max|b|, TINY)
with a = incres, b = PyTorch. Normalising by the tensor's largest magnitude (not
elementwise) keeps near-zero entries from dominating; TINY only guards an all-zero
reference (updates use a larger floor, see operands()). A tensor passes when
err <= --tol (default 1e-4, RELIABILITY.md's "whole networks ~1e-4 relative" for
fp32) against PyTorch in float32. The run is replayed in float64 too; the tables show
incres against float64 and PyTorch float32 against float64, the noise floor a correct
float32 engine sits near.

Only numpy and torch are used (Debian's /usr/bin/python3 has both); the safetensors
file is parsed by hand. Exit status: 0 pass, 1 parity failure, 2 bad input, 77 no torch.

usage: /usr/bin/python3 torch_parity.py FILE [--tol 1e-4] [--show 10]
"""
import argparse
import json
import re
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # ctest reports exit status 77 as skipped (SKIP_RETURN_CODE)
    print(f"torch_parity: SKIP: {sys.executable} cannot import {e.name} "
          "(install Debian's python3-torch, or set INCRES_PARITY_PYTHON)", file=sys.stderr)
    sys.exit(77)

TINY = 1e-12  # guards an all-zero reference only
UPDATE_FLOOR = 1e-2  # see operands()
FLIP_WINDOW = 1e-4   # |pre-activation| / rms below which a ReLU may flip (resolve_flips)
MAX_FLIPS = 64       # candidates tried per step, nearest zero first
MAX_KEPT_FLIPS = 4   # flips accepted per step

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

class _ReluFlippable(torch.autograd.Function):
    """max(z, 0), whose backward mask is (z > 0) except at the module's `flip` units,
    read when backward runs: one forward serves backward passes with several masks."""

    @staticmethod
    def forward(ctx, z, module):
        ctx.save_for_backward(z)
        ctx.module = module
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, dy):
        (z,) = ctx.saved_tensors
        mask = (z > 0).to(dy.dtype).flatten()
        if ctx.module.flip:
            mask[ctx.module.flip] = 1 - mask[ctx.module.flip]
        return dy * mask.view_as(dy), None


class Relu(nn.Module):
    """ReLU whose gradient can take the other branch at chosen units (resolve_flips).
    Only units within float32 rounding of zero are ever flipped, so the forward, which
    stays max(z, 0), is the same to that rounding either way."""

    def __init__(self):
        super().__init__()
        self.flip = []       # flat indices (into N*C*H*W) whose gradient branch flips
        self.record = False  # keep the pre-activation in self.z
        self.z = None

    def forward(self, z):
        if self.record:
            self.z = z.detach().clone()
        return _ReluFlippable.apply(z, self)


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
        self.relu1, self.relu2 = Relu(), Relu()
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
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.residual:
            y = y + (self.downsample(x) if hasattr(self, "downsample") else self.shortcut(x))
        return self.relu2(y)


class CifarResNet(nn.Module):
    """6n+2 layers: conv3x3(16)-BN-ReLU, 3 stages of n blocks (16, 32, 64 filters;
    stride 2 at the first block of stages 2 and 3), global average pool, fc."""

    def __init__(self, n, residual, shortcut, in_channels, classes, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, **bn)
        self.relu = Relu()
        C = 16
        for i, (K, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(C, K, stride if b == 0 else 1, residual, shortcut, bn))
                C = K
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
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

def make_model(meta, state, dtype):
    """The net in `dtype`, train mode, holding `state` (incres names -> arrays)."""
    torch.manual_seed(0)  # PyTorch's own init is overwritten; this only makes it quiet
    model = build(meta).to(dtype).train()  # cast first, so float64 keeps every bit loaded
    sd = model.state_dict()
    expected = {k for k in sd if not k.endswith(".num_batches_tracked")}
    if set(state) != expected:
        raise ValueError("parameter names differ between incres and the PyTorch net: "
                         f"only in incres {sorted(set(state) - expected)}, "
                         f"only in PyTorch {sorted(expected - set(state))}")
    for k, v in state.items():
        if tuple(sd[k].shape) != v.shape:
            raise ValueError(f"{k}: incres shape {list(v.shape)}, PyTorch {list(sd[k].shape)}")
    full = {k: torch.from_numpy(v) for k, v in state.items()}  # copied in by load_state_dict
    full.update({k: v for k, v in sd.items() if k.endswith(".num_batches_tracked")})
    model.load_state_dict(full, strict=True)
    return model


def make_sgd(meta, model):
    return torch.optim.SGD(model.parameters(), lr=float(meta["lr"]),
                           momentum=float(meta["momentum"]),
                           weight_decay=float(meta["weight_decay"]),
                           nesterov=meta["nesterov"] == "true")


def train_step(meta, model, opt, xs, ys):
    """One step as parity_dump takes it; returns (logits, loss)."""
    opt.zero_grad(set_to_none=True)
    logits = model(xs)
    loss = F.cross_entropy(logits, ys, label_smoothing=float(meta["smoothing"]))
    loss.backward()
    opt.step()
    return logits.detach().numpy().copy(), loss.item()


def state_of(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith(".num_batches_tracked")}


def batch(t, dtype):
    return torch.from_numpy(t["input"]).to(dtype), torch.from_numpy(t["labels"].astype(np.int64))


def forced_step(meta, t, names, k, dtype, flips=(), record=False):
    """Step k replayed from incres's state after step k-1 (params, BN running statistics
    and SGD momentum buffers, all in the file). Returns (tensors, model): the tensors of
    that step under parity_dump's names, with the step's loss as "losses[k-1]".
    flips: (relu module name, flat index) pairs whose ReLU branch is flipped."""
    prev = "init." if k == 1 else f"step{k - 1}."
    model = make_model(meta, {n: t[prev + n] for n in names}, dtype)
    relus = {n: m for n, m in model.named_modules() if isinstance(m, Relu)}
    for n, m in relus.items():
        m.record = record
        m.flip = [i for r, i in flips if r == n]
    opt = make_sgd(meta, model)
    if k > 1:  # torch.optim.SGD updates an existing buffer in place: buf = momentum * buf + d
        for n, p in model.named_parameters():
            buf = torch.from_numpy(t[f"momentum{k - 1}.{n}"])
            opt.state[p]["momentum_buffer"] = buf.to(dtype, copy=True)  # never alias t
    logits, loss = train_step(meta, model, opt, *batch(t, dtype))
    out = {}
    if k == 1:
        out["logits"], out["loss"] = logits, np.array([loss])
        for n, p in model.named_parameters():
            out["grad." + n] = p.grad.detach().numpy().copy()
    out[f"losses[{k - 1}]"] = np.array([loss])
    for n, v in state_of(model).items():
        out[f"step{k}.{n}"] = v
    for n, p in model.named_parameters():
        out[f"momentum{k}.{n}"] = opt.state[p]["momentum_buffer"].detach().numpy().copy()
    return out, model


def ambiguous_units(meta, t, names, k):
    """ReLU units of step k's forward whose pre-activation (float64, from incres's state)
    lies within FLIP_WINDOW * rms of zero: float32 rounding may put them on either side.
    Returns up to MAX_FLIPS (relu name, flat index, z / rms), nearest zero first."""
    _, model = forced_step(meta, t, names, k, torch.float64, record=True)
    found = []
    for n, m in model.named_modules():
        if isinstance(m, Relu):
            z = m.z.flatten()
            rel = (z.abs() / z.pow(2).mean().sqrt()).numpy()
            for i in np.flatnonzero(rel < FLIP_WINDOW):
                found.append((n, int(i), float(z[i] / z.pow(2).mean().sqrt())))
    return sorted(found, key=lambda f: abs(f[2]))[:MAX_FLIPS]


def incres_grads(t, meta, names, k):
    """incres's gradients of step k: in the file for step 1, else recovered from the
    momentum buffers, g = buf_k - momentum * buf_(k-1) - wd * p_(k-1) (float64; the
    cancellation costs ~1e-7 of max|buf|, far below a ReLU flip's effect)."""
    if k == 1:
        return {n: t["grad." + n].astype(np.float64) for n in names if "grad." + n in t}
    mom, wd = float(meta["momentum"]), float(meta["weight_decay"])
    return {n: t[f"momentum{k}.{n}"].astype(np.float64)
            - mom * t[f"momentum{k - 1}.{n}"].astype(np.float64)
            - wd * t[f"step{k - 1}.{n}"].astype(np.float64)
            for n in names if f"momentum{k}.{n}" in t}


def resolve_flips(meta, t, names, k, dtype, candidates, tol, start=()):
    """The ReLU flips that make PyTorch's step k in `dtype` take the branches incres took.

    A ReLU net's gradient jumps where a pre-activation crosses zero, so a unit within
    rounding of zero (a few per 10^5 units) can legitimately go either way in a correct
    float32 engine, and one such unit moves a gradient by ~1e-2. Starting from the
    flips `start`, toggle candidates greedily, keeping the best toggle only when it
    cuts the summed gradient error by a fifth or more (one that brings every gradient
    within tol is taken at once), at most MAX_KEPT_FLIPS times. A flip leaves the
    forward as it is, so one forward serves every trial and each costs a backward.
    A real bug is not explained by flips and still fails. Returns the flips."""
    prev = "init." if k == 1 else f"step{k - 1}."
    model = make_model(meta, {n: t[prev + n] for n in names}, dtype)
    relus = {n: m for n, m in model.named_modules() if isinstance(m, Relu)}
    xs, ys = batch(t, dtype)
    loss = F.cross_entropy(model(xs), ys, label_smoothing=float(meta["smoothing"]))
    params = dict(model.named_parameters())
    target = incres_grads(t, meta, names, k)

    def errs(flips):
        for n, m in relus.items():
            m.flip = [i for r, i in flips if r == n]
        gs = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
        return [err(target[n], g.detach().numpy()) for n, g in zip(params, gs)]

    flips = list(start)
    e = errs(flips)
    for _ in range(MAX_KEPT_FLIPS):
        if max(e) <= tol:
            break
        current, best = sum(min(x, 1.0) for x in e), None
        for c in candidates:
            c = (c[0], c[1])
            trial = [f for f in flips if f != c] if c in flips else flips + [c]
            te = errs(trial)
            if best is None or sum(min(x, 1.0) for x in te) < best[0]:
                best = (sum(min(x, 1.0) for x in te), trial, te)
            if max(te) <= tol:
                break
        if best is None or best[0] > 0.8 * current:  # no flip explains the difference
            break
        _, flips, e = best
    return flips


def replay_step(meta, t, names, k, tol):
    """Step k replayed in float64 and float32, ReLU flips resolved (resolve_flips).
    Returns ({dtype: tensors}, [notes on the flips taken])."""
    def worst(o):
        return max(e for _, _, e in errors(t, o))

    def forward_ok(o):  # a flip leaves the forward alone: a forward mismatch is a bug
        return all(e <= tol for label, group, e in errors(t, o)
                   if label in ("logits", "loss", f"losses[{k - 1}]") or group.startswith("BN"))

    candidates = None
    out64, flips64 = forced_step(meta, t, names, k, torch.float64)[0], []
    if worst(out64) > tol and forward_ok(out64):
        candidates = ambiguous_units(meta, t, names, k)
        flips64 = resolve_flips(meta, t, names, k, torch.float64, candidates, tol)
        if flips64:
            out64 = forced_step(meta, t, names, k, torch.float64, flips64)[0]
    out32, flips32 = forced_step(meta, t, names, k, torch.float32, flips64)[0], flips64
    # Search float32 only where exact arithmetic agrees with incres: if float64 cannot
    # be brought within tol, incres is wrong and a search would only cost time.
    if worst(out32) > tol and worst(out64) <= tol and forward_ok(out32):
        if candidates is None:
            candidates = ambiguous_units(meta, t, names, k)
        flips32 = resolve_flips(meta, t, names, k, torch.float32, candidates, tol, flips64)
        out32 = forced_step(meta, t, names, k, torch.float32, flips32)[0]
    notes = []
    z = {(c[0], c[1]): c[2] for c in candidates or []}
    for dt, flips in (("float64", flips64), ("float32", flips32)):
        if flips:
            notes.append(f"step {k}, torch {dt}: took {len(flips)} ReLU unit(s) the other way, "
                         "as incres did: " + ", ".join(f"{r}[{i}] (z/rms {z[(r, i)]:.1e})"
                                                      for r, i in flips))
    return {torch.float64: out64, torch.float32: out32}, notes


def replay_free(meta, t, names, dtype):
    """PyTorch's own run of `steps` steps from incres's init: {losses, step<S>.*}."""
    model = make_model(meta, {n: t["init." + n] for n in names}, dtype)
    opt = make_sgd(meta, model)
    losses = [train_step(meta, model, opt, *batch(t, dtype))[1] for _ in range(int(meta["steps"]))]
    out = {f"step{meta['steps']}.{n}": v for n, v in state_of(model).items()}
    out["losses"] = np.array(losses)
    return out


def err(a, b, floor=TINY):
    """max|a - b| / max(max|b|, floor), in float64; inf for a shape mismatch or non-finite a."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or not np.all(np.isfinite(a)):
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), floor))


def operands(t, name, ref, forced):
    """(label, group, incres array, reference array, floor) for one tensor of `ref`.

    With `forced` (each step replayed from incres's state), step<k>.* are compared as
    updates: value minus incres's state before step k. A wrong weight decay (1e-5 of
    the weight per step) or BN momentum is then not hidden under the much larger value
    it is applied to. Both sides round the new value to float32 (half an ulp, up to
    6e-8 of max|p|), so the update's error is taken relative to at least UPDATE_FLOOR
    * max|p|, which keeps that rounding near 1e-5."""
    b = np.asarray(ref[name], np.float64)
    m = re.fullmatch(r"losses\[(\d+)\]", name)
    if m:
        a = np.asarray(t["losses"][int(m.group(1))], np.float64).reshape(1)
        return name, "loss", a, b, TINY
    a = np.asarray(t[name], np.float64)
    m = re.fullmatch(r"step(\d+)\.(.*)", name)
    if not m:
        group = {"logits": "logits", "loss": "loss", "losses": "loss"}.get(
            name, re.sub(r"\d+$", "", name.split(".")[0]))  # grad, momentum
        return name, group, a, b, TINY
    k, n = int(m.group(1)), m.group(2)
    stat = n.endswith(("running_mean", "running_var"))
    group = ("BN stat " if stat else "param ") + ("updates" if forced else "values")
    if not forced:
        return name, group, a, b, TINY
    prev = np.asarray(t[("init." if k == 1 else f"step{k - 1}.") + n], np.float64)
    return f"update{k}.{n}", group, a - prev, b - prev, UPDATE_FLOOR * float(np.max(np.abs(prev)))


def errors(t, ref, forced=True):
    """[(label, group, err(incres, ref))] for every tensor of ref."""
    rows = []
    for name in ref:
        label, group, a, b, floor = operands(t, name, ref, forced)
        rows.append((label, group, err(a, b, floor)))
    return rows


def compare(t, ref32, ref64, forced):
    """Rows (label, group, err vs f32, err vs f64, f32 vs f64) for every tensor of ref32."""
    rows = []
    for name in ref32:
        label, group, a, b32, floor = operands(t, name, ref32, forced)
        b64 = operands(t, name, ref64, forced)[3]
        rows.append((label, group, err(a, b32, floor), err(a, b64, floor), err(b32, b64, floor)))
    return rows


def print_groups(title, rows):
    print(f"  {title:<26} {'tensors':>7} {'max vs f32':>11} {'max vs f64':>11} "
          f"{'f32 vs f64':>11}  worst tensor")
    for group in dict.fromkeys(r[1] for r in rows):
        g = [r for r in rows if r[1] == group]
        w = max(g, key=lambda r: r[2])
        print(f"  {group:<26} {len(g):>7} {w[2]:>11.3e} {max(r[3] for r in g):>11.3e} "
              f"{max(r[4] for r in g):>11.3e}  {w[0]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", help="safetensors file written by parity_dump")
    ap.add_argument("--tol", type=float, default=1e-4, help="max relative error (default 1e-4)")
    ap.add_argument("--show", type=int, default=10, help="rows of the worst-tensor table")
    args = ap.parse_args()
    torch.set_num_threads(2)

    try:
        t, meta = read_safetensors(args.file)
        if meta.get("format") != "incres-parity-1":
            raise ValueError(f"{args.file}: metadata format is {meta.get('format')!r}, "
                             "expected 'incres-parity-1' (written by tools/parity_dump)")
        names = [k[len("init."):] for k in t if k.startswith("init.")]
        forced, notes = {torch.float32: {}, torch.float64: {}}, []
        for k in range(1, int(meta["steps"]) + 1):
            outs, step_notes = replay_step(meta, t, names, k, args.tol)
            for dt, out in outs.items():
                forced[dt].update(out)
            notes += step_notes
        free = {dt: replay_free(meta, t, names, dt) for dt in (torch.float32, torch.float64)}
        missing = sorted(n for n in forced[torch.float32]
                         if n not in t and not n.startswith("losses["))
        if missing:
            raise ValueError(f"{args.file}: tensors missing: {', '.join(missing)}")
    except (ValueError, KeyError, OSError) as e:
        print(f"torch_parity: {args.file}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    rows = compare(t, forced[torch.float32], forced[torch.float64], forced=True)
    info = compare(t, free[torch.float32], free[torch.float64], forced=False)
    failed = [r[0] for r in rows if not r[2] <= args.tol]

    print(f"torch_parity: {meta['model']} shortcut {meta['shortcut']} on incres/{meta['backend']}, "
          f"batch {meta['batch']}, {meta['image']}x{meta['image']}, {meta['steps']} SGD steps "
          f"(lr {meta['lr']}, momentum {meta['momentum']}, wd {meta['weight_decay']}), "
          f"smoothing {meta['smoothing']}; torch {torch.__version__}")
    print("  err = max|incres - torch| / max|torch| per tensor; "
          f"gate: vs torch f32 <= {args.tol:g}")
    print_groups("each step from incres state", rows)
    print_groups("free-running (not gated)", info)
    print(f"  worst {min(args.show, len(rows))} gated tensors:")
    for label, _, e32, e64, floor in sorted(rows, key=lambda r: -r[2])[:args.show]:
        mark = "FAIL" if not e32 <= args.tol else "    "
        print(f"  {mark} {label:<44} {e32:>11.3e} {e64:>11.3e} {floor:>11.3e}")
    for note in notes:
        print("  " + note)
    forced_losses = [forced[torch.float32][f"losses[{k}]"][0] for k in range(len(t["losses"]))]
    pairs = zip(t["losses"], forced_losses, free[torch.float32]["losses"])
    print("  losses incres / torch from incres state / torch free-running: "
          + ", ".join(f"{a:.6f}/{b:.6f}/{c:.6f}" for a, b, c in pairs))

    if failed:
        print(f"torch_parity: FAIL: {meta['model']}/{meta['shortcut']} on {meta['backend']}: "
              f"{len(failed)} tensors beyond {args.tol:g}: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"torch_parity: PASS ({len(rows)} tensors within {args.tol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
