#!/usr/bin/env bash
# `make fuzz-cmin`: minimizes the corpora `make fuzz` grew into the committed ones.
#
# For each target, the committed seeds (fuzz/corpus/<target>/seed-*, written by
# `cargo run -p kata-fuzz --example seeds`) are kept as they are; of everything else — the
# committed corpus and what `make fuzz` found ($KATA_RS_CACHE/fuzz/corpus/<target>) — only the
# inputs that add coverage beyond the seeds and each other stay, named by their SHA-1. That is
# what `cargo fuzz cmin` does (libFuzzer's -merge=1), here by edges alone (-use_counters=0:
# hit counts would keep four times as many inputs), run on the binaries `make fuzz` builds
# (`-s none`, stable Rust) and with the seeds first, so that minimizing never drops one.
# fuzz/corpus/<target>/ is then rewritten; `make test` replays it (fuzz/tests/replay.rs, at
# most 10 s a target), so check the replay times it prints and commit the directories.
#
# Usage: fuzz/cmin.sh [TARGET...]   (no target: all of them). FUZZ_BUILD=0 uses the binaries
# of the last `make fuzz` as they are (no rebuild).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KATA_RS_CACHE:-/var/cache/kata-rs}
export CARGO_TARGET_DIR=$cache/target-fuzz
cargo=${CARGO:-cargo}
bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in "$here"/libfuzzer/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

cd "$here/.."
if [ "${FUZZ_BUILD:-1}" != 0 ]; then
  if ! $cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-cmin: installing cargo-fuzz (once)"
    $cargo install cargo-fuzz --locked
  fi
  $cargo fuzz build -s none -O --fuzz-dir fuzz/libfuzzer
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  committed=fuzz/corpus/$t
  grown=$cache/fuzz/corpus/$t
  mkdir -p "$committed" "$grown"
  out=$work/$t
  rest=$work/$t.rest
  mkdir -p "$out" "$rest"
  # The seeds first: -merge=1 keeps what OUT has and adds only what brings new coverage.
  find "$committed" -maxdepth 1 -type f -name 'seed-*' -exec cp {} "$out/" \;
  find "$committed" -maxdepth 1 -type f ! -name 'seed-*' -exec cp {} "$rest/" \;
  before=$(( $(find "$rest" -type f | wc -l) + $(find "$grown" -type f | wc -l) ))
  log=$cache/fuzz/$t.cmin.log
  if ! "$bin/$t" -merge=1 -use_counters=0 -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      "$out" "$rest" "$grown" >"$log" 2>&1; then
    echo "fuzz-cmin $t: FAILED, see $log"
    exit 1
  fi
  find "$committed" -maxdepth 1 -type f -delete
  cp "$out"/* "$committed/"
  seeds=$(find "$committed" -type f -name 'seed-*' | wc -l)
  kept=$(find "$committed" -type f ! -name 'seed-*' | wc -l)
  echo "fuzz-cmin $t: $seeds seeds + $kept of $before inputs, $(du -sk "$committed" | cut -f1) KiB"
done
echo "fuzz-cmin: replay them with cargo test -p kata-fuzz --test replay, then commit fuzz/corpus/"
