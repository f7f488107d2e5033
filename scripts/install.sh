#!/usr/bin/env bash
# scripts/install.sh — installs kata-rs for containerd, and removes exactly what it installed.
#
#   scripts/install.sh install      (what `make install` runs, after building the binaries)
#   scripts/install.sh uninstall    (what `make uninstall` runs)
#
# Environment:
#   PREFIX          where binaries and the guest image go       (default /usr/local)
#   DESTDIR         staging root for packaging; every path is under it (default: none)
#   KATA_RS_NAMES   kata (default): Kata's names, as runtime-rs installs —
#                     $PREFIX/bin/containerd-shim-kata-v2 (runtime io.containerd.kata.v2),
#                     /usr/share/defaults/kata-containers/runtime-rs/configuration.toml
#                   own: kata-rs' own names, beside an installed Kata, touching none of its paths —
#                     $PREFIX/bin/containerd-shim-kata-rs-v2 (runtime io.containerd.kata-rs.v2),
#                     /usr/share/defaults/kata-rs/configuration.toml, sandboxes in /run/kata-rs
#   BIN_DIR         where the built binaries are    (default $CARGO_TARGET_DIR/release)
#   KATA_RS_CACHE   the build cache holding the guest image (default /var/cache/kata-rs)
#
# Both name sets install `shim-ctl` in $PREFIX/bin and the guest kernel and initramfs (from the
# guest manifest `make guest` writes) in $PREFIX/share/kata-rs/<names>/, and the Rust virtiofsd
# and vhost-device-vsock (from $KATA_RS_CACHE/bin, if there) in $PREFIX/libexec/kata-rs/. The configuration is
# config/configuration-qemu-runtime-rs.toml with `kernel`, `initrd` and `virtio_fs_daemon`
# pointing at the installed files. Every file installed, and every directory the install
# made, is listed in $PREFIX/share/kata-rs/<names>/install-manifest; `uninstall` removes
# exactly those (a file changed since is removed too; a directory that is not empty stays).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACTION=${1:-}
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
NAMES=${KATA_RS_NAMES:-kata}
CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$CACHE/target}/release}

die() { echo "install.sh: error: $*" >&2; exit 1; }

case "$NAMES" in
  kata)
    SHIM=containerd-shim-kata-v2
    RUNTIME=io.containerd.kata.v2
    CONFIG=/usr/share/defaults/kata-containers/runtime-rs/configuration.toml
    ;;
  own)
    SHIM=containerd-shim-kata-rs-v2
    RUNTIME=io.containerd.kata-rs.v2
    CONFIG=/usr/share/defaults/kata-rs/configuration.toml
    ;;
  *) die "KATA_RS_NAMES=$NAMES: use kata (Kata's names, the default) or own (kata-rs' own, beside Kata)" ;;
esac
case "$PREFIX" in /*) ;; *) die "PREFIX=$PREFIX is not an absolute path" ;; esac

DATA=$PREFIX/share/kata-rs/$NAMES
MANIFEST=$DESTDIR$DATA/install-manifest

# The manifest being written (moved into place last).
TMP_MANIFEST=""

# Records the directories `install -D` is about to create for target $1 (a path without
# DESTDIR; the manifest holds such paths, so a package's manifest is right where it lands).
record_new_dirs() {
  local dir new=()
  dir=$(dirname "$1")
  while [ "$dir" != / ] && [ ! -e "$DESTDIR$dir" ]; do new=("$dir" "${new[@]}"); dir=$(dirname "$dir"); done
  for dir in "${new[@]}"; do echo "d $dir" >> "$TMP_MANIFEST"; done
}

# put MODE SOURCE TARGET: installs SOURCE at $DESTDIR/TARGET and records it.
put() {
  local target=$DESTDIR$3
  [ -f "$2" ] || die "$2 does not exist"
  record_new_dirs "$3"
  install -D -m "$1" "$2" "$target"
  echo "f $3" >> "$TMP_MANIFEST"
}

manifest_field() {
  sed -n "s/^ *\"$1\": *\"\(.*\)\",\{0,1\}$/\1/p" "$2"
}

do_install() {
  [ -e "$MANIFEST" ] && die "$MANIFEST exists: kata-rs ($NAMES names) is installed there already; run \`make uninstall\` first"
  local guest_manifest=${KATA_RS_GUEST_MANIFEST:-$CACHE/guest/manifest.json}
  [ -f "$guest_manifest" ] || die "no guest image: $guest_manifest is missing; build it with \`make guest\`"
  local kernel initrd
  kernel=$(manifest_field kernel "$guest_manifest")
  initrd=$(manifest_field initrd "$guest_manifest")
  [ -f "$kernel" ] && [ -f "$initrd" ] ||
    die "$guest_manifest names a kernel ($kernel) or initramfs ($initrd) that does not exist; rebuild with \`make guest\`"
  [ -x "$BIN_DIR/containerd-shim-kata-v2" ] && [ -x "$BIN_DIR/shim-ctl" ] ||
    die "no built shim in $BIN_DIR (cargo build --release -p kata-shim, or set BIN_DIR)"
  if [ -e "$DESTDIR$PREFIX/bin/$SHIM" ]; then
    [ "$NAMES" = own ] && die "$DESTDIR$PREFIX/bin/$SHIM exists and is not ours to overwrite"
    echo "install.sh: replacing $DESTDIR$PREFIX/bin/$SHIM (Kata's names; KATA_RS_NAMES=own installs beside Kata)" >&2
  fi

  TMP_MANIFEST=$(mktemp)
  trap 'rm -f "$TMP_MANIFEST"' EXIT
  put 0755 "$BIN_DIR/containerd-shim-kata-v2" "$PREFIX/bin/$SHIM"
  put 0755 "$BIN_DIR/shim-ctl" "$PREFIX/bin/shim-ctl"
  put 0644 "$kernel" "$DATA/vmlinuz"
  put 0644 "$initrd" "$DATA/initrd.img"
  local virtiofsd=""
  # The vsock backend where the host has no /dev/vhost-vsock; the shim finds it beside itself
  # (kata-shim/src/installed.rs: $KATA_RS_VHOST_USER_VSOCK unless set).
  if [ -x "$CACHE/bin/vhost-device-vsock" ]; then
    put 0755 "$CACHE/bin/vhost-device-vsock" "$PREFIX/libexec/kata-rs/vhost-device-vsock"
  fi
  if [ -x "$CACHE/bin/virtiofsd" ]; then
    put 0755 "$CACHE/bin/virtiofsd" "$PREFIX/libexec/kata-rs/virtiofsd"
    virtiofsd=$PREFIX/libexec/kata-rs/virtiofsd
  fi
  local config
  config=$(mktemp)
  sed -e "s|^kernel = \"\"|kernel = \"$DATA/vmlinuz\"|" \
      -e "s|^initrd = \"\"|initrd = \"$DATA/initrd.img\"|" \
      "$REPO_DIR/config/configuration-qemu-runtime-rs.toml" > "$config"
  if [ -n "$virtiofsd" ]; then
    sed -i -e "s|^virtio_fs_daemon = \"\"|virtio_fs_daemon = \"$virtiofsd\"|" \
        -e "s|^valid_virtio_fs_daemon_paths = \[|valid_virtio_fs_daemon_paths = [\"$virtiofsd\", |" "$config"
  fi
  grep -q "^kernel = \"$DATA/vmlinuz\"" "$config" && grep -q "^initrd = \"$DATA/initrd.img\"" "$config" ||
    die "config/configuration-qemu-runtime-rs.toml no longer has empty kernel/initrd keys to point at the installed image"
  put 0644 "$config" "$CONFIG"
  rm -f "$config"
  echo "f $DATA/install-manifest" >> "$TMP_MANIFEST"
  install -m 0644 "$TMP_MANIFEST" "$MANIFEST"
  echo "installed kata-rs ($NAMES names) under ${DESTDIR:-/}: runtime $RUNTIME, shim $PREFIX/bin/$SHIM, configuration $CONFIG"
  echo "manifest: $DATA/install-manifest (make uninstall removes exactly these files)"
}

do_uninstall() {
  [ -f "$MANIFEST" ] || die "$MANIFEST does not exist: nothing was installed there with $NAMES names (PREFIX, DESTDIR and KATA_RS_NAMES must match the install)"
  local kind path dirs=()
  while read -r kind path; do
    case "$kind" in
      f) rm -f -- "$DESTDIR$path" ;;
      d) dirs=("$DESTDIR$path" "${dirs[@]}") ;;
    esac
  done < "$MANIFEST"
  # Deepest first; a directory something else put files in stays.
  for path in "${dirs[@]}"; do rmdir -- "$path" 2>/dev/null || true; done
  echo "uninstalled kata-rs ($NAMES names) from ${DESTDIR:-/}"
}

case "$ACTION" in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) die "usage: scripts/install.sh install|uninstall (see the header for its variables)" ;;
esac
