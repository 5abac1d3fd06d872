#!/usr/bin/env python3
"""The data-parallel cost model of docs/distributed.md: per step, a ring allreduce
moves 2 (N - 1) / N x the gradient bytes in and out of every node; bucketed and
overlapped with backward, a step takes about

    T(N) = T_forward + max(T_backward + t_last, T_allreduce(N))

where t_last is the last bucket's allreduce (its gradients, the first layers', are
ready only when backward ends) and T_allreduce(N) = 2 (N - 1) / N x bytes / bandwidth
+ 2 (N - 1) x latency x buckets. Scaling efficiency is (T_forward + T_backward) / T(N):
the per-node batch is fixed (weak scaling), so the global batch is N times it.

The measured inputs (defaults) come from this machine, 2-core Xeon (AVX-512, AMX):
  build/incres bench resnet50 --mode train --batch 16 --profile --threads 2
  build/incres bench inception_v3 --mode train --batch 16 --profile --threads 2
Usage: bench/cost_model.py [--step-ms MODEL=MS ...] [--speedup S]
  --speedup S scales the measured step down S times (a node S times faster).
"""
import argparse

# fp32 gradient bytes: trainable parameters x 4 (incres info MODEL).
MODELS = {"resnet50": 25_557_032 * 4, "inception_v3": 27_161_264 * 4}
# Measured on this machine, batch 16 per node, 2 threads: ms per step, backward share.
MEASURED = {"resnet50": (1402.0, 0.67), "inception_v3": (1716.0, 0.68)}
BUCKET = 25 << 20
LATENCY = 20e-6  # seconds per message hop, TCP on a cluster network


def step(ms, share, grad_bytes, n, gbps):
    fwd, bwd = ms * (1 - share) / 1e3, ms * share / 1e3
    if n == 1:
        return fwd + bwd
    bw = gbps * 1e9 / 8
    buckets = -(-grad_bytes // BUCKET)
    allreduce = 2 * (n - 1) / n * grad_bytes / bw + 2 * (n - 1) * LATENCY * buckets
    last = 2 * (n - 1) / n * min(BUCKET, grad_bytes) / bw + 2 * (n - 1) * LATENCY
    return fwd + max(bwd + last, allreduce)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speedup", type=float, default=1.0)
    ap.add_argument("--nodes", default="2,8,32,128")
    a = ap.parse_args()
    nodes = [int(x) for x in a.nodes.split(",")]
    for model, grad in MODELS.items():
        ms, share = MEASURED[model]
        ms /= a.speedup
        print(f"\n{model}: {grad / 1e6:.0f} MB of fp32 gradients, {ms:.0f} ms per step of 16 images per node "
              f"(backward {100 * share:.0f}%); scaling efficiency at N nodes")
        print("| gradients | link | " + " | ".join(f"N={n}" for n in nodes) + " | allreduce at N=" + str(nodes[-1]) + " |")
        print("|---|---|" + "---|" * len(nodes) + "---|")
        for dtype, nbytes in (("fp32", grad), ("bf16", grad // 2)):
            for gbps in (10, 25, 100):
                eff = [step(ms, share, nbytes, 1, gbps) / step(ms, share, nbytes, n, gbps) for n in nodes]
                ar = 2 * (nodes[-1] - 1) / nodes[-1] * nbytes / (gbps * 1e9 / 8) * 1e3
                print(f"| {dtype} | {gbps} Gb/s | " + " | ".join(f"{100 * e:.0f}%" for e in eff) + f" | {ar:.0f} ms |")


if __name__ == "__main__":
    main()
