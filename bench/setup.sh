#!/usr/bin/env bash
# Installs and checks the peers of bench/run.sh; safe to run again (does nothing
# when everything is there).
#  - ONNX Runtime for Node (onnxruntime-node 1.30, pinned by bench/package-lock.json)
#    into bench/node_modules. Its install script is skipped: it only downloads the
#    CUDA provider; the Linux x64 CPU library ships inside the package
#    (bin/napi-v6/linux/x64/libonnxruntime.so.1, found by the binding's RUNPATH).
#  - PyTorch and torchvision from Debian (/usr/bin/python3), checked, not installed.
set -euo pipefail
cd "$(dirname "$0")"

if ! torch_version=$(/usr/bin/python3 -c 'import torch, torchvision; print(torch.__version__)' 2>/dev/null); then
  echo "bench/setup.sh: /usr/bin/python3 cannot import torch and torchvision;" \
       "install them with scripts/install-deps.sh --with-torch" >&2
  exit 1
fi

ort_ok() { node -e 'const v = require("onnxruntime-node").env.versions.node;
                    if (!v.startsWith("1.30.")) { console.error("onnxruntime-node " + v); process.exit(1); }' 2>/dev/null; }
if ! ort_ok; then
  command -v npm >/dev/null || { echo "bench/setup.sh: npm is missing (Debian: apt-get install npm)" >&2; exit 1; }
  npm_flags=(--ignore-scripts --no-audit --no-fund --prefix .)
  if [[ -f package-lock.json ]]; then
    npm ci "${npm_flags[@]}"
  else
    npm install "${npm_flags[@]}" onnxruntime-node@1.30
  fi
  if ! ort_ok; then
    echo "bench/setup.sh: require('onnxruntime-node') fails after install:" >&2
    node -e 'require("onnxruntime-node")' >&2 || true
    exit 1
  fi
fi
echo "bench/setup.sh: torch $torch_version, onnxruntime-node $(node -p 'require("onnxruntime-node").env.versions.node'): ok"
