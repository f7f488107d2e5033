#!/usr/bin/env bash
# TCP throughput host -> pod (issue 10's figures): 256 MiB from a peer namespace to busybox
# `nc -l` in a container of a sandbox joined to a pod's network namespace (tap + tc redirects
# + virtio-net), against the same transfer to the same busybox in that namespace on the host
# (veth only, no VM); prints both and the ratio. Makes and removes its own namespaces.
#
# Usage (as root, with the guest image, `make guest`): benches/pod-net.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export KATA_RS_CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KATA_RS_CACHE/target}
exec cargo bench -q --manifest-path "$ROOT/Cargo.toml" -p kata-benches --bench pod_net
