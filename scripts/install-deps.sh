#!/usr/bin/env bash
# Installs the Debian packages incres needs, only those missing. Idempotent.
# Usage: scripts/install-deps.sh [--with-torch]   (torch is needed by the parity tests)
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config
      libdnnl-dev zlib1g-dev libturbojpeg0-dev libpng-dev libcli11-dev nlohmann-json3-dev
      libgtest-dev libbenchmark-dev
      libonnx-dev libprotobuf-dev python3-onnx
      libopenmpi-dev openmpi-bin
      dataset-fashion-mnist gnuplot-nox)
# Node.js runs ONNX Runtime (bench/setup.sh installs onnxruntime-node from npm): the
# ONNX export tests and the benchmarks' peer. Debian ships npm apart from nodejs.
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)
if [[ "${1:-}" == "--with-torch" ]]; then
  pkgs+=(python3 python3-numpy python3-torch python3-torchvision)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
