#!/usr/bin/env bash
# The population inner step of this checkout against an earlier commit's, measured in the same session.
#
#   bash bench/meta_throughput_against.sh d93b247            # the commit issue 15's baseline was measured at
#   ROUNDS=5 PRESET=mulo_cpu bash bench/meta_throughput_against.sh <commit>
#
# The earlier commit is checked out in a git worktree (default /tmp/mulo_baseline_<commit>) and its CPU
# extension built there with this checkout's Python (no CUDA: the inner step under test is the CPU one). Then
# the two trees' bench/meta_throughput.py run alternately, ROUNDS times each (one thread, --inner-backend
# cpu), so a change of machine load hits both. Every row goes to bench/results/meta_throughput.jsonl with the
# git SHA of the tree that produced it; `python bench/meta_throughput.py --compare <commit>` then prints the
# per-task medians and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT="${1:?usage: bash bench/meta_throughput_against.sh COMMIT}"
ROUNDS="${ROUNDS:-3}"
PRESET="${PRESET:-mulo_cpu}"
PY="${PYTHON:-$PWD/.venv/bin/python}"
OUT_FILE="$PWD/bench/results/meta_throughput.jsonl"
TREE="${TREE:-/tmp/mulo_baseline_$COMMIT}"
if [ ! -d "$TREE" ]; then
  git worktree add -f "$TREE" "$COMMIT"
fi
# the package maps mulo.kernels to kernels/ through setup.py; a worktree run from its root needs the link
[ -e "$TREE/mulo/kernels" ] || ln -s ../kernels "$TREE/mulo/kernels"
if ! ls "$TREE"/mulo/_C*.so > /dev/null 2>&1; then
  (cd "$TREE" && MULO_BUILD_CUDA=0 "$PY" setup.py build_ext --inplace > build_ext.log 2>&1)
fi
ARGS=(--preset "$PRESET" --inner-backend cpu --threads 1 --out "$OUT_FILE")
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS: $COMMIT"
  (cd "$TREE" && "$PY" bench/meta_throughput.py "${ARGS[@]}")
  echo "round $r/$ROUNDS: this checkout"
  "$PY" bench/meta_throughput.py "${ARGS[@]}"
done
"$PY" bench/meta_throughput.py --compare "$(git -C "$TREE" rev-parse HEAD)"
