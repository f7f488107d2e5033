#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing of every target for a bounded time.
#
# cargo-fuzz drives libFuzzer built without sanitizers (`-s none`), which works on the stable
# toolchain (sanitizers need nightly's -Zsanitizer; the coverage instrumentation libFuzzer
# needs, `-Cpasses=sancov-module`, is stable). The instrumented build goes to its own target
# dir ($KATA_RS_CACHE/target-fuzz): its flags differ from every other build's.
#
# Usage: fuzz/run.sh SECONDS [TARGET...]   (no target: all of them)
# New corpus entries go to $KATA_RS_CACHE/fuzz/corpus/<target> (fuzz/corpus/<target> holds the
# committed seeds and is only read); a crash goes to $KATA_RS_CACHE/fuzz/artifacts/<target>/:
# copy it to fuzz/regressions/<target>/ with the fix, and `make test` replays it for ever.
set -euo pipefail

secs=${1:-60}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
cache=${KATA_RS_CACHE:-/var/cache/kata-rs}
export CARGO_TARGET_DIR=$cache/target-fuzz
cargo=${CARGO:-cargo}

if ! $cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (once)"
  $cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in "$here"/libfuzzer/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

cd "$here/.."
$cargo fuzz build -s none -O --fuzz-dir fuzz/libfuzzer

failed=()
for t in "${targets[@]}"; do
  corpus=$cache/fuzz/corpus/$t
  artifacts=$cache/fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  log=$cache/fuzz/$t.log
  # Each input is bounded (-timeout, -rss_limit_mb) and so is the run (-max_total_time).
  # The binary built above, run directly: `cargo fuzz run` would rebuild on every source change.
  if "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$t" "$corpus" "fuzz/corpus/$t" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')
    corpus_n=$(find "$corpus" -type f | wc -l)
    echo "fuzz $t: ok, $runs runs in ${secs}s, coverage $cov edges, corpus $corpus_n inputs"
  else
    echo "fuzz $t: FAILED, see $log; the input is in $artifacts/"
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) crashed: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
