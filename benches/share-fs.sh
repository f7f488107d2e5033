#!/usr/bin/env bash
# virtio-fs against virtio-9p against the host (issue 10's figures): boots one sandbox with
# each shared filesystem and times, in a container, reading a 64 MiB file and `find` over
# 10 000 small files, and the same on the host; prints the medians and the ratios.
#
# Usage (as root, with the guest image, `make guest`, and virtiofsd, `scripts/setup.sh`):
# benches/share-fs.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export KATA_RS_CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KATA_RS_CACHE/target}
exec cargo bench -q --manifest-path "$ROOT/Cargo.toml" -p kata-benches --bench share_fs
