#!/usr/bin/env bash
# incres against PyTorch 1.13 (Debian's python3-torch) on CIFAR ResNet training,
# side by side in one run, same batch, same 2 threads, synthetic 32x32 data.
# Each engine runs ROUNDS times, interleaved, and the best round counts for each
# (the machine is shared: the best round is the least disturbed one).
# Usage: bench/compare_train.sh [models...]   (default: resnet20 resnet56)
set -euo pipefail
cd "$(dirname "$0")/.."
models=("${@:-resnet20 resnet56}")
[[ $# -eq 0 ]] && models=(resnet20 resnet56)
batch=${BATCH:-128}; iters=${ITERS:-20}; rounds=${ROUNDS:-3}; threads=${THREADS:-2}
export OMP_NUM_THREADS=$threads
best() { python3 -c 'import sys,json; print(max(json.loads(l)["images_per_sec"] for l in sys.stdin if l.startswith("{")))'; }
peak=$(build/bench/peak_matmul | python3 -c 'import sys,json; print(json.load(sys.stdin)["gflops"])')
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads;" \
     "peak (oneDNN fp32 matmul 2048^3): $peak GFLOP/s"
printf "%-10s %6s %14s %14s %8s %12s %9s\n" model batch "incres img/s" "pytorch img/s" ratio "incres GF/s" "of peak"
for m in "${models[@]}"; do
  inc=""; pt=""
  for ((r = 0; r < rounds; r++)); do
    inc+=$(build/incres bench "$m" --mode train --batch "$batch" --iters "$iters" --json)$'\n'
    pt+=$(/usr/bin/python3 bench/pytorch_cifar_resnet.py "$m" --batch "$batch" --iters "$iters" --threads "$threads")$'\n'
  done
  i=$(printf "%s" "$inc" | best); p=$(printf "%s" "$pt" | best)
  gf=$(printf "%s" "$inc" | python3 -c 'import sys,json; print(round(max(json.loads(l)["gflops"] for l in sys.stdin if l.startswith("{")),1))')
  printf "%-10s %6s %14.1f %14.1f %7.2fx %12s %8.0f%%\n" "$m" "$batch" "$i" "$p" "$(python3 -c "print($i/$p)")" "$gf" \
    "$(python3 -c "print(100*$gf/$peak)")"
done
