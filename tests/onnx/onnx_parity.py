#!/usr/bin/python3
"""`incres export` against real runtimes: ONNX's checker and ONNX Runtime, run live.

For each case of a group:
  zoo cases     tools/run_model builds the model with random weights (incres's own
                initialisation, random BN affine parameters, running statistics of
                the input batch: inference-mode BN is not the identity, and the
                deepest nets stay finite), writes them and its eval-mode
                logits for a random batch; `incres export --weights` writes the ONNX
                model (BN kept, and again with --fold-bn); python3-onnx's checker
                (full_check: with shape inference) accepts it; ONNX Runtime 1.30
                (onnxruntime-node, tests/onnx/ort_run.mjs) runs it on the same batch.
  torchvision   torchvision 0.14 builds the model with random weights and random BN,
                its state_dict goes through tools/pth_to_safetensors.py, incres exports
                it, and ONNX Runtime's logits are compared with torchvision's own.

Metric: max|onnx - reference| / max|reference| <= --tol (default 1e-4). Exit 0 pass,
1 mismatch, 77 skipped (no torch, no onnx, or ONNX Runtime not installable: the reason
is printed).

usage: /usr/bin/python3 onnx_parity.py INCRES RUN_MODEL GROUP [--tol X] [--keep DIR]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")

try:
    import numpy as np
    import onnx
    import torch
    import torchvision
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))
from pth_to_safetensors import write_safetensors  # noqa: E402
from zoo_parity import randomise_bn, read_safetensors  # noqa: E402

# (case name, model, image, input channels, architecture flags). Every registered model
# appears in some group, with every option that changes which ops the graph holds.
GROUPS = {
    "cifar": [
        ("resnet20_A", "resnet20", 32, 3, ["--shortcut", "A"]),
        ("resnet20_B", "resnet20", 32, 3, ["--shortcut", "B"]),
        ("resnet20_C_gray", "resnet20", 32, 1, ["--shortcut", "C"]),
        ("resnet32", "resnet32", 32, 3, []),
        ("resnet44", "resnet44", 32, 3, []),
        ("resnet56", "resnet56", 32, 3, []),
        ("resnet110", "resnet110", 32, 3, []),
        ("resnet1202", "resnet1202", 32, 3, []),
        ("plain20", "plain20", 32, 1, []),
        ("plain32", "plain32", 32, 3, []),
        ("plain44", "plain44", 32, 3, []),
        ("plain56", "plain56", 32, 3, []),
        ("plain110", "plain110", 32, 3, []),
        ("preact_resnet20", "preact_resnet20", 32, 3, []),
        ("preact_resnet56", "preact_resnet56", 32, 3, []),
        ("preact_resnet110", "preact_resnet110", 32, 3, []),
        ("preact_resnet164", "preact_resnet164", 32, 3, []),
        ("preact_resnet1001", "preact_resnet1001", 32, 3, []),
    ],
    "cifar_options": [
        ("unit_bn_after_add", "resnet20", 32, 3, ["--unit", "bn-after-add"]),
        ("unit_relu_before_add", "resnet20", 32, 3, ["--unit", "relu-before-add"]),
        ("unit_relu_preact", "resnet20", 32, 3, ["--unit", "relu-preact"]),
        ("unit_full_preact_B", "resnet20", 32, 3, ["--unit", "full-preact", "--shortcut", "B"]),
        ("map_scaling", "resnet20", 32, 3, ["--shortcut-map", "scaling", "--shortcut-param", "0.5"]),
        ("map_exclusive_gate", "resnet20", 32, 3, ["--shortcut-map", "exclusive-gate", "--shortcut-param", "-6"]),
        ("map_shortcut_gate", "resnet20", 32, 3, ["--shortcut-map", "shortcut-gate", "--shortcut-param", "0"]),
        ("map_conv1x1", "resnet20", 32, 3, ["--shortcut-map", "conv1x1"]),
        ("map_dropout", "resnet20", 32, 3, ["--shortcut-map", "dropout", "--shortcut-param", "0.5"]),
        ("mini_all", "inception_mini", 32, 1, ["--factorize", "all"]),
        ("mini_none", "inception_mini", 32, 3, ["--factorize", "none"]),
        ("mini_5x5_dropout", "inception_mini", 32, 3, ["--factorize", "5x5", "--dropout", "0.5"]),
    ],
    "imagenet": [
        ("resnet18", "resnet18", 64, 3, []),
        ("plain18", "plain18", 64, 3, []),
        ("resnet34", "resnet34", 64, 3, []),
        ("plain34", "plain34", 64, 3, []),
        ("resnet50_224", "resnet50", 224, 3, []),
        ("resnet50_v1", "resnet50", 64, 3, ["--stride", "v1"]),
        ("resnet101", "resnet101", 64, 3, []),
        ("resnet152", "resnet152", 64, 3, []),
        ("preact_resnet152", "preact_resnet152", 64, 3, []),
        ("resnet200", "resnet200", 64, 3, []),
        ("preact_resnet200", "preact_resnet200", 64, 3, []),
    ],
    "inception": [
        ("inception_v3_299", "inception_v3", 299, 3, []),
        ("inception_v3_aux_bn_narrow", "inception_v3", 299, 3, ["--aux-bn", "--width", "0.25"]),
        ("inception_v3_151", "inception_v3_151", 151, 3, []),
        ("inception_v3_79", "inception_v3_79", 79, 3, []),
        ("inception_v4", "inception_v4", 75, 3, []),
        ("inception_resnet_v1", "inception_resnet_v1", 75, 3, []),
        ("inception_resnet_v2", "inception_resnet_v2", 75, 3, []),
        ("inception_resnet_v2_paper_scaled", "inception_resnet_v2", 75, 3,
         ["--paper-layout", "--residual-scale", "0.3", "--width", "0.5"]),
    ],
}
TORCHVISION = [("resnet18", 224), ("resnet50", 224), ("inception_v3", 299)]


def rel_err(a, ref):
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


class Runner:
    def __init__(self, incres, run_model, work, tol):
        self.incres, self.run_model, self.work, self.tol = incres, run_model, work, tol
        self.failures = 0

    def path(self, name):
        return os.path.join(self.work, name)

    def export(self, weights, model, flags, out, extra=()):
        t0 = time.time()
        r = subprocess.run([self.incres, "export", "--weights", weights, "--model", model, "--onnx", out, *flags,
                            *extra], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"incres export failed: {r.stderr.strip()}")
        onnx.checker.check_model(out, full_check=True)
        return time.time() - t0

    def ort(self, model_file, x):
        xin, yout = self.path("x.bin"), self.path("y.bin")
        x.astype("<f4").tofile(xin)
        r = subprocess.run(["node", os.path.join(HERE, "ort_run.mjs"), model_file, xin, ",".join(map(str, x.shape)),
                            yout], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ONNX Runtime failed on {model_file}: {r.stderr.strip()[-2000:]}")
        return np.fromfile(yout, dtype="<f4").reshape(json.loads(r.stdout)["dims"])

    def report(self, label, err, secs):
        ok = err <= self.tol and np.isfinite(err)
        print(f"{'ok  ' if ok else 'FAIL'} {label:<48} rel err {err:.2e}  (export {secs:.2f} s)", flush=True)
        self.failures += 0 if ok else 1

    def zoo_case(self, name, model, image, channels, flags):
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        x = rng.standard_normal((2, channels, image, image), dtype=np.float32)
        xs, ws, os_ = self.path("x.safetensors"), self.path("w.safetensors"), self.path("o.safetensors")
        write_safetensors(xs, {"input": torch.from_numpy(x)})
        r = subprocess.run([self.run_model, "--model", model, "--random-weights", "1", "--save-weights", ws,
                            "--calibrate-bn", "--input", xs, "--out", os_, *flags], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"run_model failed: {r.stderr.strip()}")
        ref = read_safetensors(os_)["logits"]
        shape_flags = ["--image", str(image), "--in-channels", str(channels), *flags]
        for fold in ([], ["--fold-bn"]):
            out = self.path("m.onnx")
            secs = self.export(ws, model, shape_flags, out, fold)
            self.report(f"{name}{' --fold-bn' if fold else ''}", rel_err(self.ort(out, x), ref), secs)
        # A fixed batch and the highest opset, once per case: the same numbers.
        out = self.path("m_fixed.onnx")
        secs = self.export(ws, model, shape_flags, out, ["--batch", "2", "--opset", "17"])
        self.report(f"{name} --batch 2 --opset 17", rel_err(self.ort(out, x), ref), secs)

    def torchvision_case(self, model, image):
        torch.manual_seed(0)
        if model == "inception_v3":
            net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
        else:
            net = getattr(torchvision.models, model)(weights=None)
        randomise_bn(net)
        net.eval()
        x = torch.randn(2, 3, image, image)
        with torch.no_grad():
            ref = net(x).numpy()
        ws = self.path("tv.safetensors")
        write_safetensors(ws, {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")})
        for fold in ([], ["--fold-bn"]):
            out = self.path("tv.onnx")
            secs = self.export(ws, model, ["--image", str(image)], out, fold)
            self.report(f"torchvision {model} {image}x{image}{' --fold-bn' if fold else ''}",
                        rel_err(self.ort(out, x.numpy()), ref), secs)


def uncovered_models(incres):
    """Registered models (`incres models`) that no group exports."""
    out = subprocess.run([incres, "models"], capture_output=True, text=True, check=True).stdout.splitlines()
    listed = {line.split()[0] for line in out[1:] if line.strip() and not line.startswith("(")}
    covered = {case[1] for cases in GROUPS.values() for case in cases}
    return sorted(listed - covered)


def ort_available():
    """Installs onnxruntime-node into bench/ when missing (bench/setup.sh); the reason when it cannot."""
    check = ["node", "-e", "require('onnxruntime-node')"]
    if shutil.which("node") is None:
        return "node is not installed (scripts/install-deps.sh installs it)"
    bench = os.path.join(ROOT, "bench")
    if subprocess.run(check, cwd=bench, capture_output=True).returncode == 0:
        return None
    r = subprocess.run([os.path.join(bench, "setup.sh")], capture_output=True, text=True)
    if r.returncode != 0 or subprocess.run(check, cwd=bench, capture_output=True).returncode != 0:
        return f"onnxruntime-node could not be installed by bench/setup.sh: {r.stderr.strip()[-500:]}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("incres")
    ap.add_argument("run_model")
    ap.add_argument("group", choices=[*GROUPS, "torchvision"])
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--keep", help="work in this folder and keep its files")
    a = ap.parse_args()
    missing = uncovered_models(a.incres)
    if missing:
        print(f"FAIL: no group exports {', '.join(missing)}: add them to GROUPS")
        sys.exit(1)
    reason = ort_available()
    if reason:
        print(f"skipped: {reason}")
        sys.exit(77)
    torch.set_num_threads(2)
    work = a.keep or tempfile.mkdtemp(prefix="incres-onnx-")
    os.makedirs(work, exist_ok=True)
    r = Runner(a.incres, a.run_model, work, a.tol)
    try:
        if a.group == "torchvision":
            for model, image in TORCHVISION:
                r.torchvision_case(model, image)
        else:
            for case in GROUPS[a.group]:
                r.zoo_case(*case)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    if r.failures:
        print(f"{r.failures} export(s) differ from the reference by more than {a.tol}")
        sys.exit(1)


if __name__ == "__main__":
    main()
