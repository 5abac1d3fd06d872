#!/usr/bin/env python3
"""Data-parallel speed on this machine: `mpirun -np 2 incres train` with one thread per
process against one process with two threads, same global batch, side by side; and
the share of the gradient exchange not hidden behind backward (the trainer's
exchange_exposed_seconds: per step, the time finish() still waited for the sums once
backward had ended).

Usage: bench/distributed.py [--incres build/incres] [--steps 40] [model:batch ...]
Default: resnet20:128 resnet56:128 resnet50:16 (Fashion-MNIST; resnet50 at 224x224).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ENV = {**os.environ, "INCRES_LOG": "quiet", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def train(incres, model, batch, steps, ranks, threads, folder, btl="self,vader"):
    args = [incres, "train", model, "--batch", str(batch), "--iters", str(steps), "--eval-every", str(steps),
            "--test-limit", str(2 * batch), "--train-limit", str(max(4 * batch * steps, 2048)), "--no-progress",
            "--threads", str(threads), "--out", folder]
    if ranks > 1:
        # One core each (Open MPI's default binding for 2 processes); shared memory
        # (vader) as Open MPI runs ranks of one host, or TCP as between hosts.
        args = ["mpirun", "-np", str(ranks), "--bind-to", "core", "--mca", "btl", btl, "-x", "INCRES_LOG", *args]
    subprocess.run(args, check=True, env=ENV, capture_output=True, text=True)
    with open(f"{folder}/metrics.jsonl") as f:
        row = [r for r in map(json.loads, f) if "step" in r][-1]
    return row["images_per_sec"], row.get("exchange_exposed_seconds", 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--incres", default="build/incres")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--btl", default="self,vader", help="Open MPI transports: self,vader (shared memory) or tcp,self")
    ap.add_argument("runs", nargs="*", default=["resnet20:128", "resnet56:128", "resnet50:16"])
    a = ap.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
    print(f"# {name}, {os.cpu_count()} cores; {a.steps} steps per run (resnet50: a quarter), training steps "
          f"timed, not the evaluation; btl {a.btl}")
    print("| model | global batch | 1 process x 2 threads (img/s) | 2 processes x 1 thread (img/s) | ratio | "
          "step (ms) | exchange not hidden (ms/step) | share |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in a.runs:
        model, batch = spec.split(":")
        batch = int(batch)
        steps = a.steps if model != "resnet50" else max(10, a.steps // 4)
        with tempfile.TemporaryDirectory() as d:
            one, _ = train(a.incres, model, batch, steps, 1, 2, f"{d}/one")
            two, exposed = train(a.incres, model, batch, steps, 2, 1, f"{d}/two", a.btl)
        step_ms = 1e3 * batch / two
        print(f"| {model} | {batch} | {one:.0f} | {two:.0f} | {two / one:.2f}x | {step_ms:.0f} | "
              f"{1e3 * exposed:.2f} | {100 * 1e3 * exposed / step_ms:.2f}% |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
