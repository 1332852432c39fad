#!/usr/bin/env bash
# Instructions per `Policy::decide`, counted by callgrind (valgrind), for each request kind of the
# benchmark at each rule-set size. Unlike wall-clock medians, the counts do not move with the load of a
# shared machine, so they compare two versions of the decision path exactly.
#
# Usage: scripts/decide-instructions.sh [SIZE...]   (default: 10 1000 10000 100000; env ITERATIONS=1000)
# Prints one TSV row per size and request kind: size, kind, instructions per decide.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ITERATIONS=${ITERATIONS:-1000}
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(10 1000 10000 100000)
command -v valgrind >/dev/null || { echo "valgrind is missing: run scripts/install.sh valgrind" >&2; exit 1; }

cargo build --release --quiet --example decide_instructions
BIN=${CARGO_TARGET_DIR:-target}/release/examples/decide_instructions
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

printf 'rules\trequest\tinstructions_per_decide\n'
for size in "${SIZES[@]}"; do
  valgrind --tool=callgrind --toggle-collect='*decide_instructions*measure_*' \
    --callgrind-out-file="$WORK/cg.$size" \
    "$BIN" "$size" "$ITERATIONS" >"$WORK/kinds.$size" 2>"$WORK/valgrind.$size" ||
    { cat "$WORK/valgrind.$size" >&2; exit 1; }
  # Inclusive counts of each measure_<kind> function; each ran ITERATIONS decides.
  callgrind_annotate --inclusive=yes "$WORK/cg.$size" |
    awk -v size="$size" -v n="$ITERATIONS" 'match($0, /measure_[a-z_]+/) {
        count = $1; gsub(",", "", count)
        printf "%s\t%s\t%d\n", size, substr($0, RSTART + 8, RLENGTH - 8), count / n
      }' | sort -t$'\t' -k2
done
