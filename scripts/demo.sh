#!/usr/bin/env bash
# `make demo`: trains ResNet-20 on Fashion-MNIST (Debian's dataset-fashion-mnist) on a
# short schedule, evaluates the checkpoint on the 10,000 test images and plots the
# curve. About 5 minutes on 2 cores. Knobs: EPOCHS, TRAIN_LIMIT, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/demo}
epochs=${EPOCHS:-3}
limit=${TRAIN_LIMIT:-24000}
rm -rf "$out"
echo "== incres demo: ResNet-20 on Fashion-MNIST ($limit training images, $epochs epochs) =="
build/incres info resnet20 --in-channels 1 | tail -n 1
build/incres train resnet20 --data fashion-mnist --train-limit "$limit" --epochs "$epochs" \
  --batch 128 --lr 0.1 --schedule cosine --out "$out"
build/incres eval "$out/last.safetensors"
echo "metrics: $out/metrics.jsonl   curve: $out/curve.png   checkpoint: $out/last.safetensors"
