#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz) of what untrusted bytes reach: CheckRequest
# messages, rule files, hosts and SPIFFE IDs. Builds the targets in fuzz/, then runs each for
# SECONDS_PER_TARGET (default 30), growing fuzz/corpus/<target> from the committed seeds in
# fuzz/seeds/<target>. Fails if any target crashes, leaks, runs out of memory or time on one input; the
# input is saved under fuzz/artifacts/<target>/ and `cargo +nightly fuzz run <target> <file>` replays it.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
# Needs the nightly toolchain and cargo-fuzz (scripts/install.sh fuzz). FUZZ_TOOLCHAIN
# picks another toolchain than `nightly`, FUZZ_TARGETS a subset of the targets (space-separated), and
# FUZZ_SANITIZER a sanitizer (default none; `address` for long runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
# No sanitizer by default: the crate forbids `unsafe`, so AddressSanitizer mostly watches dependencies,
# and it costs about half the executions per second and a slower build, which a short run cannot spare.
sanitizer="${FUZZ_SANITIZER:-none}"
read -r -a targets <<<"${FUZZ_TARGETS:-check_request_bytes rule_file host spiffe}"
# Bounds per input: a rule file or check that needs more is a finding (an alias bomb, a quadratic path),
# not something to wait for.
limits=(-rss_limit_mb=2048 -timeout=10)

started=$SECONDS
step() { echo "== [$((SECONDS - started))s] $*" >&2; }

step "toolchain and cargo-fuzz"
if ! cargo "+$toolchain" --version >/dev/null 2>&1 || ! cargo fuzz --version >/dev/null 2>&1; then
  echo "the $toolchain toolchain or cargo-fuzz is missing: run scripts/install.sh fuzz" >&2
  exit 1
fi

# cargo-fuzz has no --locked: fetching with it first fails on a stale fuzz/Cargo.lock, and the build
# then uses the lock file as it is.
step "building the fuzz targets"
cargo "+$toolchain" fetch --locked --manifest-path fuzz/Cargo.toml
for target in "${targets[@]}"; do
  cargo "+$toolchain" fuzz build --sanitizer="$sanitizer" "$target"
done

failed=()
for target in "${targets[@]}"; do
  step "fuzzing $target for ${seconds}s"
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  dict=()
  if [ -f "fuzz/dicts/$target.dict" ]; then
    dict=("-dict=fuzz/dicts/$target.dict")
  fi
  # New inputs go to the first directory only; seed files are read, never rewritten.
  if ! cargo "+$toolchain" fuzz run --sanitizer="$sanitizer" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" "${limits[@]}" "${dict[@]}" -print_final_stats=1; then
    failed+=("$target")
  fi
done

step "done"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found a problem in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
