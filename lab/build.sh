#!/usr/bin/env bash
# lab/build.sh — builds the nested lab's L1 initramfs into a cache outside the checkout and
# prints where L1's kernel and initramfs are (lab/README.md).
#
#   lab/build.sh        prints `kernel=<path>`, `initrd=<path>`, `kernel_version=<v>` and
#                       `key=<k>` lines on stdout; the host test (lab/runner/tests/lab.rs)
#                       reads them.
#
# L1 runs Debian's cloud kernel (`linux-image-cloud-amd64`, installed by scripts/setup.sh), so
# its modules (kvm, kvm-amd, vhost_vsock, vfio-pci, virtiofs, ...) match it. The initramfs is
# small: busybox-static, those modules in dependency order, and lab/init.sh as /init. Every
# other file L1 needs (the test program, QEMU, virtiofsd, the L2 guest image) it reads from
# this host's root, exported read-only over virtio-fs by the host test.
#
# Environment:
#   KATA_RS_CACHE   cache root (default /var/cache/kata-rs); the image lands in
#                   $KATA_RS_CACHE/lab/<key>/l1-initrd.img, keyed by every input.
#   BUSYBOX         busybox binary (default /bin/busybox, a static one)
set -euo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
BUSYBOX=${BUSYBOX:-/bin/busybox}
META_PKG=linux-image-cloud-amd64
# Module groups L1's /init loads, each with its dependencies (modprobe --show-depends).
MODULE_GROUPS=(
  "fs:virtio_pci virtiofs"
  "kvm:kvm-amd"
  "vsock:vhost_vsock"
  "vfio:vfio-pci vfio_iommu_type1"
  "net:tun overlay veth sch_ingress act_mirred cls_u32"
)

die() { echo "lab: error: $*" >&2; exit 1; }
log() { echo "lab: $*" >&2; }

# The kernel the meta package points at: linux-image-<version> in its Depends.
kernel_version() {
  local dep
  dep=$(dpkg-query -W -f='${Depends}' "$META_PKG" 2>/dev/null) ||
    die "$META_PKG is not installed (run scripts/setup.sh)"
  dep=${dep%%,*}; dep=${dep%% *}
  echo "${dep#linux-image-}"
}

KVER=$(kernel_version)
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
[ -f "$KERNEL" ] || die "$KERNEL is missing (reinstall $META_PKG)"
[ -d "$MODDIR" ] || die "$MODDIR is missing (reinstall $META_PKG)"
[ -x "$BUSYBOX" ] && ! readelf -l "$BUSYBOX" 2>/dev/null | grep -q INTERP ||
  die "$BUSYBOX is not a static busybox (install busybox-static)"

# group -> the .ko files to load, in order, without duplicates.
module_list() {
  local m
  for m in "$@"; do
    modprobe -S "$KVER" --show-depends "$m" || die "module $m is not in $MODDIR"
  done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
}

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/kata-lab-stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,dev,proc,sys,run,tmp,host,etc/lab}
cp "$BUSYBOX" "$STAGE/bin/busybox"
cp "$LAB_DIR/init.sh" "$STAGE/init"
chmod 0755 "$STAGE/init" "$STAGE/bin/busybox"
for g in "${MODULE_GROUPS[@]}"; do
  name=${g%%:*}
  # shellcheck disable=SC2086
  module_list ${g#*:} >"$STAGE/etc/lab/modules.$name"
  while read -r ko; do
    mkdir -p "$STAGE$(dirname "$ko")"
    cp "$ko" "$STAGE$ko"
  done <"$STAGE/etc/lab/modules.$name"
done
echo "$KVER" >"$STAGE/etc/lab/kernel_version"

# Content key: every staged path and the bytes of every staged file, and the kernel.
KEY=$( { cd "$STAGE" && find . -type f | LC_ALL=C sort | xargs sha256sum
         sha256sum "$KERNEL" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
OUT=$CACHE/lab/$KEY/l1-initrd.img
if [ -f "$OUT" ]; then
  touch "$(dirname "$OUT")"
else
  mkdir -p "$(dirname "$OUT")"
  # Fixed mtimes and owners: the same inputs give the same archive.
  find "$STAGE" -exec touch -h -d @1704067200 {} +
  (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort |
     cpio --quiet -o -H newc -R 0:0 --reproducible) >"$OUT.tmp.$$"
  mv "$OUT.tmp.$$" "$OUT"
  log "L1 initramfs: $(du -h "$OUT" | cut -f1) ($KEY)"
fi
# The empty directory L1 mounts a tmpfs on for the test program's state (the export is
# read-only, so the mount point must exist on this host).
mkdir -p "$CACHE/lab/state"
# Keep the five most recently used keys.
ls -1td "$CACHE"/lab/*/ 2>/dev/null | grep -v '/state/$' | tail -n +6 | xargs -r rm -rf
echo "kernel=$KERNEL"
echo "initrd=$OUT"
echo "kernel_version=$KVER"
echo "key=$KEY"
