#!/usr/bin/env bash
# incres against its peers, side by side in one run, same batch, same threads,
# synthetic data: PyTorch (Debian's python3-torch, bench/pytorch_train.py) for
# training, ONNX Runtime 1.30 (Node binding, bench/ort_infer.mjs on models exported
# by bench/export_onnx.py) for inference. Each row runs incres and its peer
# interleaved, ROUNDS times, and the best round counts for each (the machine is
# shared: the best round is the least disturbed one). Prints a markdown table for
# docs/performance.md, with the target of the speed issues per row (the fp32 targets of
# "right and fast on every x86-64 CPU"); the raw JSON lines
# go to bench/.cache/last-run.jsonl.
#
# Usage: bench/run.sh [ROW|GROUP ...]      (default: every row)
#   rows:   train-resnet20 train-resnet56 train-resnet50 infer-resnet50-b16
#           infer-inception_v3-b16 infer-resnet50-b1 isa-inception_v3-75 memory-resnet50-b32 loader-resnet20
#           bf16-resnet50-b16 bf16-inception_v3-b16 bf16-ort-resnet50-b16 (bf16 inference, on
#           CPUs with AVX512-BF16 or AMX: against PyTorch with autocast bf16, and against
#           ONNX Runtime fp32; their "of peak" is of the bf16 peak, AMX's where it has AMX)
#           bf16-train-resnet50-b16 bf16-train-resnet56-b128 (against PyTorch autocast bf16)
#           bf16-train-self-resnet50-b16 (against incres fp32)
#   groups: train, infer, memory, infer-resnet50, ... (every row named GROUP-*)
# Environment: ROUNDS (2), THREADS (2), ITERS and WARMUP (timed and untimed steps of
# every row; default per row, see row_spec; the memory row always runs 2 + 1);
# ONEDNN_MAX_CPU_ISA=AVX2 runs incres (and the peers' oneDNN, where they use it) on
# the AVX2 path of an AVX-512 machine, and measures the AVX2 peak.
set -euo pipefail
cd "$(dirname "$0")/.."

py=/usr/bin/python3   # Debian's, with torch; not a pyenv python3 on PATH
rounds=${ROUNDS:-2}; threads=${THREADS:-2}
export OMP_NUM_THREADS=$threads
jsonl=bench/.cache/last-run.jsonl

all_rows=(train-resnet20 train-resnet56 train-resnet50 infer-resnet50-b16 infer-inception_v3-b16
          infer-resnet50-b1 isa-inception_v3-75 memory-resnet50-b32 loader-resnet20
          bf16-resnet50-b16 bf16-inception_v3-b16 bf16-ort-resnet50-b16
          bf16-train-resnet50-b16 bf16-train-resnet56-b128 bf16-train-self-resnet50-b16)
args=("$@"); ((${#args[@]})) || args=("${all_rows[@]}")
rows=()
for arg in "${args[@]}"; do
  n=${#rows[@]}
  for r in "${all_rows[@]}"; do [[ $r == "$arg" || $r == "$arg"-* ]] && rows+=("$r"); done
  (( ${#rows[@]} > n )) || { echo "bench/run.sh: no row '$arg'; rows: ${all_rows[*]}" >&2; exit 2; }
done

for f in build/incres build/bench/peak build/bench/peak_matmul; do
  [[ -x $f ]] || { echo "bench/run.sh: $f is missing: build first (make, or cmake --build build)" >&2; exit 1; }
done
bench/setup.sh >&2

# row_spec ROW: sets what the row measures.
#   desc    the workload column
#   kind    thr (images/s, higher is better), lat (median ms), mem (peak RSS MB)
#   target  the issue's bar on the ratio incres/peer (>= for thr, <= for lat and mem)
#   inc     the incres command; peer: the peer's command
declare -A onnx_file  # row -> its exported model, filled on the first row_spec
row_spec() {
  local it wu
  precision=fp32  # which peak the row's "of peak" divides by
  case $1 in
    bf16-train-*)
      local m=${1#bf16-train-}; m=${m#self-}; m=${m%-b*}; local b=${1##*-b} image=224
      [[ $m == resnet56 ]] && image=32
      it=${ITERS:-$((b > 16 ? 20 : 5))}; wu=${WARMUP:-2}; kind=thr; precision=bf16
      inc=(build/incres bench "$m" --mode train --batch "$b" --image "$image" --precision bf16 --iters "$it" --warmup "$wu" --json)
      if [[ $1 == bf16-train-self-* ]]; then
        desc="train bf16 $m b$b ${image}x$image (peer incres fp32)"; target=1.7
        peer=(build/incres bench "$m" --mode train --batch "$b" --image "$image" --iters "$it" --warmup "$wu" --json)
      else
        desc="train bf16 $m b$b ${image}x$image"; target=1.4
        peer=("$py" bench/pytorch_train.py --model "$m" --precision bf16 --batch "$b" --image "$image"
              --iters "$it" --warmup "$wu" --threads "$threads")
      fi ;;
    bf16-resnet50-b16 | bf16-inception_v3-b16 | bf16-ort-resnet50-b16)
      local m=${1#bf16-}; m=${m#ort-}; m=${m%-b*}; local image=224 flags=()
      [[ $m == inception_v3 ]] && { image=299; flags=(--no-aux); }
      it=${ITERS:-10}; wu=${WARMUP:-3}; kind=thr; precision=bf16
      inc=(build/incres bench "$m" --mode infer --batch 16 --image "$image" "${flags[@]}" --precision bf16
           --iters "$it" --warmup "$wu" --json)
      if [[ $1 == bf16-ort-* ]]; then
        desc="infer bf16 $m b16 ${image}x$image (peer fp32)"; target=2.0
        [[ -n ${onnx_file[$1]:-} ]] || onnx_file[$1]=$("$py" bench/export_onnx.py --model "$m" --batch 16 --image "$image")
        peer=(node bench/ort_infer.mjs --model-file "${onnx_file[$1]}" --model "$m" --batch 16 --image "$image"
              --iters "$it" --warmup "$wu" --threads "$threads")
      else
        desc="infer bf16 $m b16 ${image}x$image"; target=1.4
        peer=("$py" bench/pytorch_train.py --model "$m" --mode infer --precision bf16 --batch 16 --image "$image"
              --iters "$it" --warmup "$wu" --threads "$threads")
      fi ;;
    train-resnet20 | train-resnet56)
      local m=${1#train-}; it=${ITERS:-20}; wu=${WARMUP:-3}
      desc="train fp32 $m b128 32x32"; kind=thr; target=1.5
      inc=(build/incres bench "$m" --mode train --batch 128 --iters "$it" --warmup "$wu" --json)
      peer=("$py" bench/pytorch_train.py --model "$m" --batch 128 --image 32 --iters "$it" --warmup "$wu" --threads "$threads") ;;
    train-resnet50)
      it=${ITERS:-5}; wu=${WARMUP:-2}
      desc="train fp32 resnet50 b16 224x224"; kind=thr; target=1.5
      inc=(build/incres bench resnet50 --mode train --batch 16 --iters "$it" --warmup "$wu" --json)
      peer=("$py" bench/pytorch_train.py --model resnet50 --batch 16 --image 224 --iters "$it" --warmup "$wu" --threads "$threads") ;;
    infer-resnet50-b16 | infer-inception_v3-b16 | infer-resnet50-b1)
      local m=${1#infer-}; m=${m%-b*}; local b=${1##*-b} image=224 flags=()
      [[ $m == inception_v3 ]] && { image=299; flags=(--no-aux); }
      if ((b == 1)); then it=${ITERS:-30}; wu=${WARMUP:-5}; kind=lat; target=0.85
      else it=${ITERS:-10}; wu=${WARMUP:-3}; kind=thr; target=1.15; fi
      desc="infer fp32 $m b$b ${image}x$image"
      [[ -n ${onnx_file[$1]:-} ]] || onnx_file[$1]=$("$py" bench/export_onnx.py --model "$m" --batch "$b" --image "$image")
      inc=(build/incres bench "$m" --mode infer --batch "$b" --image "$image" "${flags[@]}" --iters "$it" --warmup "$wu" --json)
      peer=(node bench/ort_infer.mjs --model-file "${onnx_file[$1]}" --model "$m" --batch "$b" --image "$image"
            --iters "$it" --warmup "$wu" --threads "$threads") ;;
    isa-inception_v3-75)
      # A narrow Inception on this CPU's own ISA against the same binary capped to
      # AVX2 (the same machine, so only the ISA differs): AVX-512 must not be slower.
      it=${ITERS:-10}; wu=${WARMUP:-3}
      desc="train fp32 inception_v3 75x75 width 0.25 b64, native / AVX2-capped"; kind=thr; target=1.0
      inc=(build/incres bench inception_v3 --image 75 --width 0.25 --no-aux --mode train --batch 64 --iters "$it" --warmup "$wu" --json)
      peer=(env ONEDNN_MAX_CPU_ISA=AVX2 "${inc[@]}") ;;
    loader-resnet20)
      # The loader keeping up: incres training on Fashion-MNIST (decoding, shuffling,
      # normalising in its worker threads) against the same steps on synthetic data.
      it=${ITERS:-150}
      desc="train resnet20 b128 on Fashion-MNIST / synthetic data"; kind=thr; target=0.95
      inc=(train_json build/incres train resnet20 --data fashion-mnist --batch 128 --iters "$it" --no-progress)
      peer=(build/incres bench resnet20 --mode train --in-channels 1 --batch 128 --iters 20 --warmup 3 --json) ;;
    memory-resnet50-b32)
      desc="peak memory, train resnet50 b32 224x224"; kind=mem; target=1.0
      inc=(build/incres bench resnet50 --mode train --batch 32 --iters 2 --warmup 1 --json)
      peer=("$py" bench/pytorch_train.py --model resnet50 --batch 32 --image 224 --iters 2 --warmup 1 --threads "$threads") ;;
  esac
}

# json_of CMD...: the last JSON line CMD prints; nothing (and a message) if it fails.
json_of() {
  local out
  if out=$("$@"); then grep '^{' <<<"$out" | tail -n1 || true; else echo "bench/run.sh: failed: $*" >&2; fi
}

# rss_json_of CMD...: json_of CMD with "max_rss_mb", CMD's peak resident memory, added.
rss_json_of() {
  local kb_file line
  kb_file=$(mktemp)
  if [[ -x /usr/bin/time ]]; then
    line=$(json_of /usr/bin/time -f %M -o "$kb_file" "$@")
  else  # the same figure, from the kernel's accounting of a waited-for child
    line=$(json_of "$py" -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(r)' "$kb_file" "$@")
  fi
  [[ -n $line ]] && echo "{\"max_rss_mb\":$(awk '{print $1 / 1024}' "$kb_file"),${line#\{}"
  rm -f "$kb_file"
}

# train_json CMD...: runs `incres train`, prints its training images/s as a JSON line.
train_json() {
  local out
  out=$("$@" 2>&1) || { echo "bench/run.sh: failed: $*" >&2; return 0; }
  grep -o '[0-9.]* images/s' <<<"$out" | tail -n1 | awk '{print "{\"images_per_sec\":" $1 "}"}'
}

# record ROW ROUND ENGINE LINE: appends LINE to the JSONL file, tagged with the row,
# the round and (unless LINE names it) the engine.
record() {
  local tag="\"row\":\"$1\",\"round\":$2,"
  [[ $4 == *'"engine"'* ]] || tag+="\"engine\":\"$3\","
  [[ -n $4 ]] && echo "{$tag${4#\{}" >>"$jsonl"
  return 0
}

# One table row from the row's JSON lines (stdin): the best round of each engine.
summarize='
import json, sys
row, kind, desc, target, peak = sys.argv[1:6]
target, peak = float(target), float(peak)
lines = [l for l in map(json.loads, sys.stdin) if l["row"] == row]
key = {"thr": "images_per_sec", "lat": "median_ms", "mem": "max_rss_mb"}[kind]
best = max if kind == "thr" else min
inc = [l for l in lines if l["engine"] == "incres"]
peer = [l for l in lines if l["engine"] != "incres"]
name = ("onnxruntime fp32" if row.startswith("bf16-ort") else "incres fp32" if row.startswith("bf16-train-self")
        else "pytorch bf16" if row.startswith("bf16")
        else "onnxruntime" if desc.startswith("infer") else "incres, synthetic" if row.startswith("loader")
        else "incres, AVX2-capped" if row.startswith("isa") else "pytorch")
unit = {"thr": "img/s", "lat": "ms", "mem": "MB"}[kind]
i = best(inc, key=lambda l: l[key]) if inc else None
p = best(peer, key=lambda l: l[key]) if peer else None
cell = lambda l: f"{l[key]:.1f} {unit}" if l else "failed"
if i and p:
    r = i[key] / p[key]
    met = r >= target if kind == "thr" else r <= target
    ratio = f"{r:.2f}x" + ("" if kind == "thr" else ", lower is better")
    verdict = "met" if met else "missed"
else:
    ratio, verdict = "-", "-"
bar = (">= " if kind == "thr" else "<= ") + f"{target:.2f}x"
gflops = i.get("gflops") if i and kind != "mem" else None
gf, of_peak = (f"{gflops:.1f}", f"{100 * gflops / peak:.0f}%") if gflops else ("-", "-")
print(f"| {desc} | {cell(i)} | {name} {cell(p)} | {ratio} | {bar} | {verdict} | {gf} | {of_peak} |")
'

mkdir -p bench/.cache
for row in "${rows[@]}"; do row_spec "$row"; done  # the ONNX exports (cached), before the table
: >"$jsonl"
# The peak: the FMA loop of bench/peak (fp32 at the widest vectors of the ISA oneDNN
# dispatches to, and bf16 dot products where the ISA has them), the best of three
# runs, and oneDNN's fp32 matmul as the achievable GEMM (also the best of three: one
# measurement alone can land on a disturbed second of this shared machine).
best_of3() {
  for i in 1 2 3; do "$@"; done |
    "$py" -c 'import json, sys; print(json.dumps(max(map(json.loads, sys.stdin), key=lambda j: j[sys.argv[1]])))' "$key"
}
key=fp32_gflops; peak_line=$(best_of3 build/bench/peak --threads "$threads")
key=gflops; gemm_line=$(best_of3 build/bench/peak_matmul)
record peak 0 peak "$peak_line"
record gemm 0 peak_matmul "$gemm_line"
field() { "$py" -c 'import json, sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("none" if v is None else v)' "$@"; }
peak=$(field "$peak_line" fp32_gflops)
# bf16's peak: AMX tile products where the CPU has them, else AVX512-BF16 dot products.
bf16_peak=$(field "$peak_line" amx_bf16_gflops)
[[ $bf16_peak == none ]] && bf16_peak=$(field "$peak_line" bf16_gflops)
isa=$(build/incres bench resnet20 --batch 2 --iters 1 --warmup 0 --threads "$threads" --json | grep '^{' | tail -n1 |
  "$py" -c 'import json, sys; print(json.loads(sys.stdin.read())["isa"])')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
     "oneDNN ISA: $isa${ONEDNN_MAX_CPU_ISA:+ (ONEDNN_MAX_CPU_ISA=$ONEDNN_MAX_CPU_ISA)}; $threads threads;" \
     "best of $rounds interleaved rounds"
echo "peak (FMA loop, $(field "$peak_line" fp32_vector)): fp32 $peak GFLOP/s, bf16 dot products" \
     "$(field "$peak_line" bf16_gflops) GFLOP/s, AMX bf16 tile products $(field "$peak_line" amx_bf16_gflops) GFLOP/s; achievable GEMM (oneDNN matmul 2048^3): fp32" \
     "$(field "$gemm_line" gflops) GFLOP/s ($(field "$gemm_line" impl)), bf16 $(field "$gemm_line" bf16_gflops) GFLOP/s" \
     "($(field "$gemm_line" bf16_impl))"
echo
echo "| workload | incres | peer | ratio incres/peer | target | | incres GFLOP/s* | of peak |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  row_spec "$row"
  if [[ $precision == bf16 && $bf16_peak == none ]]; then
    echo "| $desc | skipped: no bf16 on this CPU ($isa) | | | | | | |"
    continue
  fi
  for ((r = 1; r <= rounds; r++)); do
    if [[ $kind == mem ]]; then
      record "$row" "$r" incres "$(rss_json_of "${inc[@]}")"
      record "$row" "$r" pytorch "$(json_of "${peer[@]}")"
    else
      record "$row" "$r" incres "$(json_of "${inc[@]}")"
      record "$row" "$r" "$(case $row in bf16-train-self-*) echo incres-fp32 ;;
                            train-* | bf16-resnet* | bf16-inception* | bf16-train-*) echo pytorch ;;
                            loader-*) echo incres-synthetic ;; isa-*) echo incres-avx2 ;; *) echo onnxruntime ;; esac)" \
        "$(json_of "${peer[@]}")"
    fi
  done
  "$py" -c "$summarize" "$row" "$kind" "$desc" "$target" "$([[ $precision == bf16 ]] && echo "$bf16_peak" || echo "$peak")" <"$jsonl"
done
echo
echo "* a direct convolution's FLOPs over the time taken, and its share of the FMA-loop peak (fp32; bf16 rows:" \
     "the bf16 peak, AMX's where present): fp32 inference runs its Winograd convolutions with fewer multiplications," \
     "so its figure can pass the peak"
echo "peers: $("$py" -c 'import json, sys
print(", ".join(sorted({l["peer"] for l in map(json.loads, sys.stdin) if "peer" in l and l["engine"] != "incres"})))' <"$jsonl");" \
     "raw results: $jsonl"
