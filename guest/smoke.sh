#!/usr/bin/env bash
# guest/smoke.sh — boots the guest image's busybox variant under QEMU TCG and
# checks what the host crates rely on:
#   1. plain q35 boot reaches /init and the VM powers itself off (ACPI);
#   2. q35 with vhost-user-vsock-pci (hybrid vsock through vhost-device-vsock)
#      and virtio-9p-pci: the vsock transport probes, the 9p tag mounts, a
#      host file is read and a guest file is written back;
#   3. microvm without ACPI, devices given on the kernel command line
#      (virtio-mmio, as the built-in VMM does it): 9p over virtio-mmio mounts;
#   4. hot-plug through QMP: a vCPU, a DIMM and a PCIe device (ACPI and pciehp).
# Exit status 0 when every check passes. Kernel/initrd from the manifest.
set -uo pipefail

CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
MANIFEST=${KATA_RS_GUEST_MANIFEST:-$CACHE/guest/manifest.json}
VSOCK_BACKEND=${VHOST_DEVICE_VSOCK:-$CACHE/bin/vhost-device-vsock}
QEMU=${QEMU:-qemu-system-x86_64}
get() { sed -n "s/^ *\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" "$MANIFEST"; }
kernel=$(get kernel)
initrd=$(get initrd_busybox)
[ -f "$kernel" ] && [ -f "$initrd" ] || { echo "smoke: no guest image (run make guest)" >&2; exit 1; }

tmp=$(mktemp -d)
bpid=
trap '[ -n "$bpid" ] && kill $bpid 2>/dev/null; rm -rf "$tmp"' EXIT
fails=0
check() {  # check LOG PATTERN WHAT
  if grep -q -- "$2" "$1"; then echo "ok   $3"; else echo "FAIL $3 (no '$2' in $1)"; fails=$((fails + 1)); fi
}
boot() {  # boot NAME QEMU_ARGS... : runs QEMU to completion (or 180 s)
  local name=$1; shift
  local t0=$EPOCHREALTIME rc=0
  timeout 180 "$QEMU" -accel tcg -cpu max -m 256 -smp 1 -nodefaults -display none \
    -no-reboot -serial "file:$tmp/$name.log" -kernel "$kernel" -initrd "$initrd" "$@" \
    </dev/null 2>"$tmp/$name.err" || rc=$?
  echo "---- $name: exit $rc after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
  [ "$rc" = 124 ] && { echo "FAIL $name timed out"; fails=$((fails + 1)); }
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && cat "$tmp/$name.err"
  return 0
}

# 1. The plain recipe: q35, ACPI power-off (reboot=t + -no-reboot as fallback).
boot plain -M q35 -append "console=ttyS0 panic=-1 reboot=t"
check "$tmp/plain.log" KATA_RS_INIT_REACHED "plain: /init reached"
check "$tmp/plain.log" KATA_RS_INIT_DONE "plain: /init ran to the end"
check "$tmp/plain.log" "reboot: Power down" "plain: ACPI power-off"

# 2. Hybrid vsock and 9p on q35 PCI.
mkdir -p "$tmp/share"
echo hello-from-host >"$tmp/share/hello"
if [ -x "$VSOCK_BACKEND" ]; then
  "$VSOCK_BACKEND" --guest-cid 3 --socket "$tmp/vu.sock" --uds-path "$tmp/vsock.uds" \
    >"$tmp/vsock-backend.log" 2>&1 &
  bpid=$!
  for _ in $(seq 50); do [ -S "$tmp/vu.sock" ] && break; sleep 0.1; done
  vsock_args=(-object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem
              -chardev "socket,id=vs,path=$tmp/vu.sock" -device vhost-user-vsock-pci,chardev=vs)
else
  echo "skip vsock: $VSOCK_BACKEND missing (scripts/setup.sh installs it)"
  vsock_args=()
fi
boot pci -M q35 "${vsock_args[@]}" \
  -fsdev "local,id=fs0,path=$tmp/share,security_model=none" \
  -device virtio-9p-pci,fsdev=fs0,mount_tag=kataShared \
  -append "console=ttyS0 panic=-1 reboot=t kata_rs.smoke"
if [ -n "$bpid" ]; then
  kill "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null; bpid=
  check "$tmp/pci.log" "vsock transport registered" "pci: virtio vsock transport"
  check "$tmp/pci.log" "virtio driver vmw_vsock_virtio_transport bound" "pci: vsock device bound"
fi
for fs in ext4 tmpfs devtmpfs overlay fuse virtiofs 9p cgroup cgroup2 hugetlbfs mqueue devpts; do
  check "$tmp/pci.log" "smoke: filesystems.* $fs " "pci: filesystem $fs registered"
done
check "$tmp/pci.log" "smoke: overlay ok" "pci: overlay mount"
check "$tmp/pci.log" "smoke: namespaces mnt uts ipc net pid user ok" "pci: namespaces"
check "$tmp/pci.log" "smoke: seccomp" "pci: seccomp"
check "$tmp/pci.log" "cgroup2 controllers: cpuset cpu io memory hugetlb pids" "pci: cgroup v2 controllers"
for c in cpu,cpuacct cpuset memory pids devices freezer hugetlb blkio; do
  check "$tmp/pci.log" "smoke: cgroup1 $c ok" "pci: cgroup v1 $c"
done
check "$tmp/pci.log" "9p kataShared mounted" "pci: 9p mount"
check "$tmp/pci.log" "9p file hello: hello-from-host" "pci: 9p read of a host file"
check "$tmp/share/from-guest" written-by-guest "pci: 9p write seen on the host"

# 3. virtio-mmio from the command line (microvm, no ACPI, no PCI).
rm -f "$tmp/share/from-guest"
boot mmio -M microvm,acpi=off \
  -fsdev "local,id=fs1,path=$tmp/share,security_model=none" \
  -device virtio-9p-device,fsdev=fs1,mount_tag=kataShared \
  -append "console=ttyS0 panic=-1 reboot=t kata_rs.smoke"
check "$tmp/mmio.log" "virtio_mmio.device=" "mmio: devices passed on the command line"
check "$tmp/mmio.log" "9p kataShared mounted" "mmio: 9p over virtio-mmio"
check "$tmp/mmio.log" "reboot: Restarting system" "mmio: VM ended by reset (no ACPI)"

# 4. Hot-plug on q35 through QMP while /init waits: a vCPU and a DIMM (ACPI),
#    and a virtio-rng on a PCIe root port (ACPI PCI hot-plug, QEMU's q35 default,
#    then native pciehp with ACPI hot-plug switched off).
qmp() {  # qmp SOCKET JSON...: run QMP commands, fail on the first error
  python3 - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def call(cmd):
    f.write(cmd + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r: continue
        if "error" in r: sys.exit(f"qmp: {cmd}: {r['error']['desc']}")
        return r
json.loads(f.readline())
call('{"execute":"qmp_capabilities"}')
for c in sys.argv[2:]: call(c)
PY
}
hotplug_boot() {  # hotplug_boot NAME EXTRA_QEMU_ARGS...
  local name=$1; shift
  rm -f "$tmp/qmp.sock"
  boot "$name" -M q35 -smp 1,sockets=1,cores=2,threads=1,maxcpus=2 -m 256,slots=2,maxmem=1G \
    -device pcie-root-port,id=rp0,bus=pcie.0,chassis=1 \
    -qmp "unix:$tmp/qmp.sock,server=on,wait=off" "$@" \
    -append "console=ttyS0 panic=-1 reboot=t kata_rs.wait=6" &
  local qpid=$!
  for _ in $(seq 300); do grep -q KATA_RS_WAITING "$tmp/$name.log" 2>/dev/null && break; sleep 0.1; done
  if qmp "$tmp/qmp.sock" \
      '{"execute":"device_add","arguments":{"driver":"max-x86_64-cpu","id":"cpu1","socket-id":0,"core-id":1,"thread-id":0}}' \
      '{"execute":"object-add","arguments":{"qom-type":"memory-backend-ram","id":"mem1","size":134217728}}' \
      '{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"dimm1","memdev":"mem1"}}' \
      '{"execute":"device_add","arguments":{"driver":"virtio-rng-pci","id":"rng1","bus":"rp0"}}'; then
    echo "ok   $name: QMP hot-plug accepted"
  else
    echo "FAIL $name: QMP hot-plug"; fails=$((fails + 1))
  fi
  wait "$qpid"
  check "$tmp/$name.log" "hotplug: cpus present=0-1 online=0-1" "$name: vCPU hot-plugged and onlined"
  check "$tmp/$name.log" "blocks=3 offline_blocks=0" "$name: 128M DIMM hot-plugged, every block online"
  check "$tmp/$name.log" "1af4:0x1044 driver=virtio-pci" "$name: virtio-rng hot-plugged on the root port"
  check "$tmp/$name.log" "hotplug: hwrng virtio_rng" "$name: virtio hw_random answers"
}
hotplug_boot hotplug-acpi
hotplug_boot hotplug-pciehp -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off
check "$tmp/hotplug-pciehp.log" "pciehp.*Slot.*Link Up" "hotplug-pciehp: native pciehp handled the slot"

if [ "$fails" -gt 0 ]; then
  echo "smoke: $fails check(s) failed; consoles kept in ${KEEP:=$CACHE/guest/smoke-logs}"
  mkdir -p "$KEEP" && cp "$tmp"/*.log "$KEEP"/
  exit 1
fi
echo "smoke: all checks passed"
