#!/usr/bin/env bash
# Times `ctr run --rm <busybox> echo` with runc and with kata-rs (io.containerd.kata.v2) under
# one private containerd, prints both and the ratio, then times `containerd-shim-kata-v2 start`
# until its socket answers.
#
# Usage (as root): benches/ctr_run.sh [RUNS]   (default 5 runs each; needs the guest image,
# `make guest`, and Debian's busybox-static).
set -euo pipefail

RUNS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export KATA_RS_CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KATA_RS_CACHE/target}
IMAGE=localhost/kata-rs/busybox:latest

cargo build -q --release -p kata-shim --bin containerd-shim-kata-v2 --manifest-path "$ROOT/Cargo.toml"
SHIM_DIR=$CARGO_TARGET_DIR/release

WORK=$(mktemp -d /tmp/kata-rs-ctr-bench.XXXXXX)
CTD_PID=
cleanup() {
    [ -n "$CTD_PID" ] && kill "$CTD_PID" 2>/dev/null && wait "$CTD_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A busybox OCI layout tarball (Debian's busybox-static), as `ctr image import` takes it.
make_image() {
    local d=$WORK/image r=$WORK/image-rootfs
    mkdir -p "$d/blobs/sha256" "$r/bin"
    cp /bin/busybox "$r/bin/busybox"
    for a in sh echo true sleep cat; do ln -s busybox "$r/bin/$a"; done
    tar -C "$r" -cf "$WORK/layer.tar" .
    blob() { local h; h=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$d/blobs/sha256/$h"; echo "$h $(stat -c %s "$1")"; }
    read -r LH LS < <(blob "$WORK/layer.tar")
    printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$LH" >"$WORK/config.json"
    read -r CH CS < <(blob "$WORK/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$CH" "$CS" "$LH" "$LS" >"$WORK/manifest.json"
    read -r MH MS < <(blob "$WORK/manifest.json")
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"}}]}' "$MH" "$MS" "$IMAGE" >"$d/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
    tar -C "$d" -cf "$BUSYBOX_TAR" .
}
BUSYBOX_TAR=$WORK/busybox.tar
make_image

echo 'version = 2' > "$WORK/config.toml"
PATH="$SHIM_DIR:$PATH" containerd --config "$WORK/config.toml" --root "$WORK/root" --state "$WORK/state" \
    --address "$WORK/containerd.sock" >"$WORK/containerd.log" 2>&1 &
CTD_PID=$!
CTR=(ctr --address "$WORK/containerd.sock" --namespace bench)
for _ in $(seq 100); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
"${CTR[@]}" image import "$BUSYBOX_TAR" >/dev/null

# Mean wall time in ms of RUNS runs of `ctr run --rm` with runtime $1.
mean_ms() {
    local runtime=$1 total=0 t0 t1
    for i in $(seq "$RUNS"); do
        t0=$(date +%s%N)
        out=$("${CTR[@]}" run --rm --runtime "$runtime" "$IMAGE" "bench-$i-$$" echo hi)
        t1=$(date +%s%N)
        [ "$out" = hi ] || { echo "unexpected output from $runtime: $out" >&2; exit 1; }
        total=$((total + (t1 - t0) / 1000000))
    done
    echo $((total / RUNS))
}

"${CTR[@]}" run --rm "$IMAGE" warmup echo hi >/dev/null
RUNC_MS=$(mean_ms io.containerd.runc.v2)
KATA_MS=$(mean_ms io.containerd.kata.v2)
ACCEL=$(grep -o 'accelerator=[A-Za-z]*' "$WORK/containerd.log" | tail -1 | cut -d= -f2)
echo "ctr run --rm echo, mean of $RUNS: runc ${RUNC_MS} ms, kata-rs ${KATA_MS} ms (accelerator ${ACCEL:-unknown})"
awk -v k="$KATA_MS" -v r="$RUNC_MS" 'BEGIN { printf "ratio kata-rs / runc: %.1fx\n", k / r }'

# `containerd-shim-kata-v2 start` until its socket answers (a fresh bundle with a config.json);
# each idle shim is then killed by pid and its socket removed.
BUNDLE=$WORK/bundle
mkdir -p "$BUNDLE"
echo '{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/"}}' >"$BUNDLE/config.json"
python3 - "$SHIM_DIR/containerd-shim-kata-v2" "$BUNDLE" "$WORK/containerd.sock" "$RUNS" <<'PY'
import os, signal, socket, subprocess, sys, time
exe, bundle, address, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
env = dict(os.environ, TTRPC_ADDRESS=address + ".ttrpc")
times = []
for i in range(runs):
    t0 = time.perf_counter()
    out = subprocess.run([exe, "-namespace", "bench", "-address", address, "-publish-binary",
                          "/usr/bin/containerd", "-id", f"start-{i}-{os.getpid()}", "start"],
                         cwd=bundle, env=env, capture_output=True, check=True).stdout.decode()
    path = out.removeprefix("unix://")
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    times.append((time.perf_counter() - t0) * 1000)
    s.close()
    for pid in os.listdir("/proc"):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            continue
        if path.encode() in b" ".join(cmd) and cmd[0].endswith(b"containerd-shim-kata-v2"):
            os.kill(int(pid), signal.SIGKILL)
    os.unlink(path)
times.sort()
print(f"containerd-shim-kata-v2 start to socket answering, {runs} runs: "
      f"median {times[len(times) // 2]:.1f} ms, min {times[0]:.1f} ms, max {times[-1]:.1f} ms")
PY
