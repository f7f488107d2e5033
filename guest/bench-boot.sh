#!/usr/bin/env bash
# guest/bench-boot.sh — boot time of the guest image under QEMU TCG.
#
#   guest/bench-boot.sh [-n RUNS] [-k KERNEL] [-i INITRD] [-m MARKER] [-a APPEND]
#                       [-t TIMEOUT] [-- EXTRA_QEMU_ARGS...]
#
# Boots the image RUNS times (default 3) and prints, for each run and as the
# median, the seconds from just before QEMU is exec'd to the moment MARKER
# appears on the serial console (read line by line from QEMU's stdio, timed
# with bash's $EPOCHREALTIME, so there is no polling delay). QEMU is killed
# once the marker is seen: the figure is boot time, not shutdown time.
#
# Defaults come from the guest manifest ($KATA_RS_GUEST_MANIFEST, else
# $KATA_RS_CACHE/guest/manifest.json): its kernel, its busybox initrd, and the
# busybox /init's marker KATA_RS_INIT_REACHED. To time the agent, pass its
# initrd, the line it prints when it serves, and the vsock device after `--`.
#
# Output: one "run N: S s" line per run on stderr, then on stdout
#   median_s=<S> runs=<N> marker=<MARKER> initrd=<PATH>
set -euo pipefail

CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
MANIFEST=${KATA_RS_GUEST_MANIFEST:-$CACHE/guest/manifest.json}
runs=3 kernel= initrd= marker=KATA_RS_INIT_REACHED timeout=120
append="console=ttyS0 panic=-1 reboot=t quiet"
QEMU=${QEMU:-qemu-system-x86_64}

manifest_get() {  # manifest_get KEY: a string value of the flat manifest
  [ -f "$MANIFEST" ] || return 0
  sed -n "s/^ *\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" "$MANIFEST"
}

while [ $# -gt 0 ]; do
  case "$1" in
    -n) runs=$2; shift 2 ;;
    -k) kernel=$2; shift 2 ;;
    -i) initrd=$2; shift 2 ;;
    -m) marker=$2; shift 2 ;;
    -a) append=$2; shift 2 ;;
    -t) timeout=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "bench-boot: unknown argument $1" >&2; exit 2 ;;
  esac
done
kernel=${kernel:-$(manifest_get kernel)}
initrd=${initrd:-$(manifest_get initrd_busybox)}
[ -f "$kernel" ] || { echo "bench-boot: no kernel (run make guest)" >&2; exit 1; }
[ -f "$initrd" ] || { echo "bench-boot: no initrd (run make guest)" >&2; exit 1; }

tmp=$(mktemp -d)
qpid=
cleanup() { [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

one_boot() {  # one_boot RUN [QEMU_ARGS...]: prints the seconds to the marker, or fails
  local run=$1; shift
  local fifo=$tmp/serial console=$tmp/console.$run.log t0 t1= line deadline
  rm -f "$fifo"; mkfifo "$fifo"
  t0=$EPOCHREALTIME
  "$QEMU" -M q35 -accel tcg -cpu max -m 256 -smp 1 -nodefaults -display none \
    -no-reboot -serial stdio -kernel "$kernel" -initrd "$initrd" -append "$append" \
    "$@" </dev/null >"$fifo" 2>"$tmp/qemu.$run.err" &
  qpid=$!
  deadline=$((SECONDS + timeout))
  exec 7<"$fifo"
  while [ "$SECONDS" -lt "$deadline" ] && IFS= read -r -t "$timeout" line <&7; do
    printf '%s\n' "$line" >>"$console"
    if [[ $line == *"$marker"* ]]; then t1=$EPOCHREALTIME; break; fi
  done
  kill "$qpid" 2>/dev/null || true
  exec 7<&-
  wait "$qpid" 2>/dev/null || true
  qpid=
  if [ -z "$t1" ]; then
    echo "bench-boot: run $run: marker '$marker' not seen; console:" >&2
    tail -20 "$console" >&2; cat "$tmp/qemu.$run.err" >&2
    return 1
  fi
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

times=()
for i in $(seq 1 "$runs"); do
  s=$(one_boot "$i" "$@")
  echo "run $i: $s s" >&2
  times+=("$s")
done
median=$(printf '%s\n' "${times[@]}" | sort -n |
  awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "median_s=$median runs=$runs marker=$marker initrd=$initrd"
