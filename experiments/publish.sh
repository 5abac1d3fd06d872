#!/usr/bin/env bash
# Copies an experiment's results from its run folders into the repository:
#   experiments/NAME/report.md, plot.png, results.tsv (as `incres experiment NAME`
#   wrote them) and runs/RUN-sSEED/metrics.jsonl (every run's raw metrics: a few KB).
# experiments/NAME/README.md, the claim, the setup and the verdict in words, is
# written by hand beside them.
# Usage: experiments/publish.sh NAME [OUT]     (OUT: the --out of the runs, default runs)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: experiments/publish.sh NAME [OUT]}
out=${2:-runs}
src=$out/$name
[[ -f $src/report.md ]] || { echo "publish.sh: no $src/report.md: run \`incres experiment $name\` first" >&2; exit 1; }
dst=experiments/$name
mkdir -p "$dst/runs"
cp "$src/report.md" "$src/results.tsv" "$dst/"
[[ -f $src/plot.png ]] && cp "$src/plot.png" "$dst/"
for run in "$src"/*/; do
  [[ -f $run/metrics.jsonl ]] || continue
  mkdir -p "$dst/runs/$(basename "$run")"
  cp "$run/metrics.jsonl" "$dst/runs/$(basename "$run")/"
done
echo "published $src -> $dst"
