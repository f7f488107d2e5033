#!/usr/bin/env bash
# Installs what kata-rs needs on a fresh Debian 12 machine (run as root).
# Idempotent: every step checks first, so a second run takes seconds.
set -euo pipefail

CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
mkdir -p "$CACHE"

debs=(
  # the VMM and the guest-image build
  qemu-system-x86 linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev
  cpio xz-utils busybox-static kmod
  # the block rootfs fixture (mkfs.ext4 -d)
  e2fsprogs
  # containerd tier
  containerd runc
  # Kubernetes tier (kata-shim/tests/cri.rs): CNI bridge, host-local, loopback in /usr/lib/cni
  containernetworking-plugins
  # networking and namespaces
  iproute2 util-linux
  # the Rust virtiofsd's build (its seccomp filter and capability handling)
  libseccomp-dev libcap-ng-dev
  # the nested lab's L1 kernel and its kvm-amd, vhost_vsock, vfio modules (lab/README.md)
  linux-image-cloud-amd64
)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The hybrid-vsock backend used when /dev/vhost-vsock is absent (rust-vmm's vhost-device-vsock).
# Installed into the cache so a fresh checkout reuses it.
VSOCK_VER=${VHOST_DEVICE_VSOCK_VERSION:-0.3.0}
if [ ! -x "$CACHE/bin/vhost-device-vsock" ] && [ ! -e /dev/vhost-vsock ]; then
  echo "setup: cargo install vhost-device-vsock $VSOCK_VER (about 3 minutes, once)"
  cargo install --locked --quiet --root "$CACHE" --version "$VSOCK_VER" vhost-device-vsock
fi
# virtio-fs, the default shared filesystem: the Rust virtiofsd, one per sandbox, run by
# kata-resource from the cache (`virtio_fs_daemon` empty). A cold install takes about 80 s.
VIRTIOFSD_VER=${VIRTIOFSD_VERSION:-1.14.0}
if [ ! -x "$CACHE/bin/virtiofsd" ]; then
  echo "setup: cargo install virtiofsd $VIRTIOFSD_VER (about 80 seconds, once)"
  cargo install --locked --quiet --root "$CACHE" --version "$VIRTIOFSD_VER" virtiofsd
fi
echo "setup: ok"
