#!/usr/bin/env bash
# guest/build.sh — builds the kata-rs guest image (kernel + initramfs) into a
# cache outside the checkout and writes the manifest the host crates read.
#
#   guest/build.sh                  kernel, busybox initrd, agent initrds
#                                   (runs `cargo build --profile guest-agent -p kata-agent` first)
#   guest/build.sh --busybox-init   kernel and busybox initrd only; no cargo.
#                                   Agent initrds are still made if an agent
#                                   binary already exists.
#   guest/build.sh --kernel-only    just the kernel (useful to warm the cache)
#
# Environment:
#   KATA_RS_CACHE        cache root               (default /var/cache/kata-rs)
#   CARGO_TARGET_DIR     where cargo puts the agent (default $KATA_RS_CACHE/target)
#   KATA_RS_AGENT        use this agent binary instead of building one
#   KATA_RS_AGENT_PROFILE  cargo profile of the agent: guest-agent (default: release built
#                          for size, see Cargo.toml), release, or debug
#   JOBS                 kernel make -j           (default $(nproc))
#   KATA_RS_INITRD_COMPRESS  none (default) or gzip
#
# Layout (see guest/README.md):
#   $CACHE/kernel/src-<pkgver>/linux-source-6.1     extracted once per package version
#   $CACHE/kernel/<pkgver>-<frag16>/{bzImage,vmlinux,config,kernel_version,build.log}
#   $CACHE/guest/initrd/<inputs16>/<name>.img        content-keyed initramfs files
#   $CACHE/guest/image/<inputs16>/kata-containers.img the rootfs image (guest/image.sh)
#   $CACHE/guest/manifest.json, $CACHE/guest/current/ symlinks
set -euo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$GUEST_DIR")
CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
FRAGMENT=$GUEST_DIR/kernel/kata-rs.config
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUSYBOX=${BUSYBOX:-/bin/busybox}
JOBS=${JOBS:-$(nproc)}
# Initramfs compression: none by default. Under TCG a gzip'd agent image reached
# "serving" 0.2 s later than an uncompressed one; the files only live in the
# cache, so their size does not matter. gzip stays available.
COMPRESS=${KATA_RS_INITRD_COMPRESS:-none}
# Fixed mtime for every initramfs entry (2024-01-01T00:00:00Z): reproducible archives.
EPOCH=1704067200

mode=full
for arg in "$@"; do
  case "$arg" in
    --busybox-init) mode=busybox ;;
    --kernel-only) mode=kernel ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# {0,1}//;p}' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "guest: $*" >&2; }
die() { echo "guest: error: $*" >&2; exit 1; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------- kernel ---

PKG_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
  die "$SRC_PKG is not installed (run scripts/setup.sh)"
[ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL missing (reinstall $SRC_PKG)"
FRAGMENT_SHA=$(sha256 "$FRAGMENT")
KERNEL_KEY=$PKG_VERSION-${FRAGMENT_SHA:0:16}
KDIR=$CACHE/kernel/$KERNEL_KEY
SRC_DIR=$CACHE/kernel/src-$PKG_VERSION/linux-source-6.1

extract_source() {
  [ -f "$SRC_DIR/Makefile" ] && return 0
  log "extracting $SRC_TARBALL into $(dirname "$SRC_DIR") (once per package version)"
  local tmp=$CACHE/kernel/src-$PKG_VERSION.tmp.$$
  rm -rf "$tmp"; mkdir -p "$tmp"
  nice -n 5 tar -xJf "$SRC_TARBALL" -C "$tmp"
  rm -rf "$CACHE/kernel/src-$PKG_VERSION"
  mv "$tmp" "$CACHE/kernel/src-$PKG_VERSION"
}

build_kernel() {
  if [ -f "$KDIR/bzImage" ]; then
    log "kernel $KERNEL_KEY cached"
    return 0
  fi
  mkdir -p "$CACHE/kernel"
  # One builder per key; a concurrent `make guest` waits here and then finds the result.
  exec 8>"$CACHE/kernel/.lock-$KERNEL_KEY"
  flock 8
  if [ -f "$KDIR/bzImage" ]; then exec 8>&-; return 0; fi
  extract_source
  local out=$KDIR/build
  mkdir -p "$out"
  local klog=$KDIR/build.log
  : >"$klog"
  local kmake=(make -C "$SRC_DIR" O="$out" ARCH=x86_64
    KBUILD_BUILD_USER=kata-rs KBUILD_BUILD_HOST=kata-rs
    KBUILD_BUILD_TIMESTAMP="$PKG_VERSION")
  log "configuring kernel $KERNEL_KEY: tinyconfig + $(basename "$FRAGMENT")"
  {
    "${kmake[@]}" tinyconfig
    "$SRC_DIR/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$FRAGMENT"
    "${kmake[@]}" olddefconfig
  } >>"$klog" 2>&1 || { tail -30 "$klog" >&2; die "kernel configuration failed (log: $klog)"; }
  "$GUEST_DIR/kernel/check-config.sh" "$FRAGMENT" "$out/.config"
  log "building bzImage with -j$JOBS (about 7 min on 2 cores; log: $klog)"
  local t0=$SECONDS
  nice -n 5 "${kmake[@]}" -j"$JOBS" bzImage >>"$klog" 2>&1 ||
    { tail -40 "$klog" >&2; die "kernel build failed (log: $klog)"; }
  local secs=$((SECONDS - t0))
  "${kmake[@]}" -s kernelrelease >"$KDIR/kernel_version"
  cp "$out/.config" "$KDIR/config"
  cp "$out/vmlinux" "$KDIR/vmlinux.tmp" && mv "$KDIR/vmlinux.tmp" "$KDIR/vmlinux"
  echo "$secs" >"$KDIR/build_seconds"
  # bzImage last: its presence marks the key complete.
  cp "$out/arch/x86/boot/bzImage" "$KDIR/bzImage.tmp" && mv "$KDIR/bzImage.tmp" "$KDIR/bzImage"
  log "kernel $(cat "$KDIR/kernel_version") built in ${secs}s"
  exec 8>&-
}

# ------------------------------------------------------------- initramfs ---

GEN_CPIO=$CACHE/kernel/src-$PKG_VERSION/gen_init_cpio

# The kernel's own usr/gen_init_cpio writes the archive from a spec list: device
# nodes need no root, entries come out in list order, and `-t` fixes the mtime of
# dirs, nodes and links (regular files keep theirs, so staged copies get EPOCH).
ensure_gen_cpio() {
  [ -x "$GEN_CPIO" ] && return 0
  extract_source
  cc -O2 -o "$GEN_CPIO.tmp" "$SRC_DIR/usr/gen_init_cpio.c" && mv "$GEN_CPIO.tmp" "$GEN_CPIO"
}

# spec_add PATH LINE — collects "PATH<TAB>LINE"; emitted sorted by PATH so parents
# precede children and the archive order never depends on discovery order.
SPEC=
spec_add() { SPEC+="$1"$'\t'"$2"$'\n'; }
spec_dirs_of() {  # every parent directory of PATH
  local d=$1
  while d=$(dirname "$d"); [ "$d" != / ]; do spec_add "$d" "dir $d 0755 0 0"; done
}
spec_file() {  # spec_file DEST SRC MODE : copy SRC to the stage with the fixed mtime
  local dest=$1 src=$2 mode=$3 staged=$STAGE$1
  mkdir -p "$(dirname "$staged")"
  cp -L "$src" "$staged"
  touch -h -d "@$EPOCH" "$staged"
  spec_dirs_of "$dest"
  spec_add "$dest" "file $dest $staged $mode 0 0"
}

spec_base() {
  local d
  for d in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /run /mnt /etc /var /lib; do
    spec_add "$d" "dir $d 0755 0 0"
  done
  spec_add /root "dir /root 0700 0 0"
  spec_add /tmp "dir /tmp 1777 0 0"
  # The kernel opens /dev/console for PID 1's stdio before devtmpfs is mounted.
  spec_add /dev/console "nod /dev/console 0600 0 0 c 5 1"
  spec_add /dev/null "nod /dev/null 0666 0 0 c 1 3"
  mkdir -p "$STAGE/etc"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
  printf 'root:x:0:\n' >"$STAGE/etc/group"
  touch -d "@$EPOCH" "$STAGE/etc/passwd" "$STAGE/etc/group"
  spec_add /etc/passwd "file /etc/passwd $STAGE/etc/passwd 0644 0 0"
  spec_add /etc/group "file /etc/group $STAGE/etc/group 0644 0 0"
}

spec_busybox() {
  spec_file /bin/busybox "$BUSYBOX" 0755
  local applet
  while read -r applet; do
    applet=/${applet#/}
    case "$applet" in /bin/busybox|/linuxrc|/init) continue ;; esac
    spec_dirs_of "$applet"
    spec_add "$applet" "slink $applet /bin/busybox 0777 0 0"
  done < <("$BUSYBOX" --list-full)
}

# The agent is a dynamically linked glibc program: copy the stripped binary as /init,
# plus every library ldd resolves and the ELF interpreter, at the same paths.
spec_agent() {  # spec_agent BINARY STRIP_MODE (--strip-all | --strip-debug)
  local agent=$1
  local stripped=$STAGE.agent
  strip "$2" -o "$stripped" "$agent"
  spec_file /init "$stripped" 0755
  local lib
  for lib in $(agent_libs "$agent"); do spec_file "$lib" "$lib" 0755; done
}

agent_libs() {  # absolute paths of the interpreter and the libraries ldd resolves
  local interp
  interp=$(readelf -l "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  [ -n "$interp" ] && echo "$interp"
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
}

write_busybox_init() {
  cat >"$1" <<'EOF'
#!/bin/sh
# kata-rs busybox /init: the boot-time reference and the image smoke test.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
echo "KATA_RS_INIT_REACHED uptime=$(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
if grep -q 'kata_rs.smoke' /proc/cmdline; then
  echo "smoke: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s)"
  for d in /sys/bus/virtio/drivers/*/virtio*; do
    [ -e "$d" ] && echo "smoke: virtio driver $(basename "$(dirname "$d")") bound to $(basename "$d")"
  done
  [ -d /sys/bus/virtio/drivers/vmw_vsock_virtio_transport ] &&
    echo "smoke: vsock transport registered"
  dmesg | grep -i vsock | sed 's/^/smoke: dmesg: /'
  echo "smoke: filesystems $(awk '{ print $NF }' /proc/filesystems | tr '\n' ' ')"
  mkdir -p /tmp/ov/l /tmp/ov/u /tmp/ov/w /tmp/ov/m && echo lower >/tmp/ov/l/f &&
    mount -t overlay overlay -o lowerdir=/tmp/ov/l,upperdir=/tmp/ov/u,workdir=/tmp/ov/w /tmp/ov/m &&
    [ "$(cat /tmp/ov/m/f)" = lower ] && echo "smoke: overlay ok" && umount /tmp/ov/m
  unshare -r -m -u -i -n -p -f sh -c 'hostname ns-test && [ "$(hostname)" = ns-test ]' &&
    echo "smoke: namespaces mnt uts ipc net pid user ok"
  grep -q '^Seccomp:' /proc/self/status && echo "smoke: seccomp $(grep ^Seccomp_filters /proc/self/status)"
  mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg &&
    echo "smoke: cgroup2 controllers: $(cat /tmp/cg/cgroup.controllers)" && umount /tmp/cg
  for c in cpu,cpuacct cpuset memory pids devices freezer hugetlb blkio; do
    mkdir -p "/tmp/cg1-$c" && mount -t cgroup -o "$c" none "/tmp/cg1-$c" && echo "smoke: cgroup1 $c ok" &&
      umount "/tmp/cg1-$c"
  done
  for f in /sys/bus/virtio/devices/*/mount_tag; do
    [ -e "$f" ] || continue
    tag=$(tr -d '\0' <"$f")
    mkdir -p "/mnt/$tag"
    if mount -t 9p -o trans=virtio,version=9p2000.L,access=any "$tag" "/mnt/$tag"; then
      echo "smoke: 9p $tag mounted"
      for g in "/mnt/$tag"/*; do [ -f "$g" ] && echo "smoke: 9p file $(basename "$g"): $(cat "$g")"; done
      echo written-by-guest >"/mnt/$tag/from-guest" && echo "smoke: 9p write ok"
      umount "/mnt/$tag"
    else
      echo "smoke: 9p $tag mount FAILED"
    fi
  done
fi
# kata_rs.wait=N: announce, give the host N seconds to hot-plug, then report.
wait=$(sed -n 's/.*kata_rs\.wait=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$wait" ]; then
  echo "KATA_RS_WAITING cpus=$(cat /sys/devices/system/cpu/online) memory_blocks=$(ls -d /sys/devices/system/memory/memory* | wc -l)"
  sleep "$wait"
  for c in /sys/devices/system/cpu/cpu*/online; do
    [ "$(cat "$c")" = 1 ] || echo 1 >"$c"
  done
  echo "hotplug: cpus present=$(cat /sys/devices/system/cpu/present) online=$(cat /sys/devices/system/cpu/online)"
  echo "hotplug: memory MemTotal=$(sed -n 's/MemTotal: *//p' /proc/meminfo) blocks=$(ls -d /sys/devices/system/memory/memory* | wc -l) offline_blocks=$(grep -l offline /sys/devices/system/memory/memory*/state | wc -l)"
  for d in /sys/bus/pci/devices/*; do
    echo "hotplug: pci $(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") driver=$(basename "$(readlink "$d/driver")")"
  done
  [ -e /dev/hwrng ] && echo "hotplug: hwrng $(cat /sys/class/misc/hw_random/rng_current) $(head -c 8 /dev/hwrng | od -An -tx1 | tr -d ' ')"
fi
if grep -q 'kata_rs.shell' /proc/cmdline; then
  setsid cttyhack sh
fi
echo "KATA_RS_INIT_DONE"
# Without ACPI (microvm, the built-in VMM) the kernel cannot power off: reboot
# instead and let the VMM end the VM on reset (QEMU -no-reboot, reboot=t).
if [ -d /sys/firmware/acpi/tables ]; then poweroff -f; fi
reboot -f
EOF
}

# build_initrd NAME VARIANT [AGENT] — prints the path of the (cached) image.
build_initrd() {
  local name=$1 variant=$2 agent=${3:-}
  STAGE=$(mktemp -d "$CACHE/guest/stage.XXXXXX")
  SPEC=
  spec_base
  case "$variant" in
    busybox)
      spec_busybox
      write_busybox_init "$STAGE.init"
      spec_file /init "$STAGE.init" 0755 ;;
    agent) spec_agent "$agent" --strip-all ;;
    agent-debug) spec_agent "$agent" --strip-debug; spec_busybox ;;
  esac
  local list=$STAGE.list
  printf '%s' "$SPEC" | LC_ALL=C sort -u -t $'\t' -k1,1 | cut -f2- >"$list"
  # Content key: the spec plus the bytes of every file it names.
  local key
  key=$( { echo "compress=$COMPRESS"; sed "s|$STAGE|@|g" "$list"
            awk '$1 == "file" { print $3 }' "$list" | xargs sha256sum | cut -d' ' -f1
          } | sha256sum | cut -c1-16)
  local out=$CACHE/guest/initrd/$key/$name.img
  if [ -f "$out" ]; then
    touch "$(dirname "$out")"  # in use again: keep it out of prune_initrds' reach
  else
    mkdir -p "$(dirname "$out")"
    case "$COMPRESS" in
      none) "$GEN_CPIO" -t "$EPOCH" "$list" >"$out.tmp.$$" ;;
      gzip) "$GEN_CPIO" -t "$EPOCH" "$list" | gzip -9 -n >"$out.tmp.$$" ;;
      *) die "KATA_RS_INITRD_COMPRESS must be none or gzip, not $COMPRESS" ;;
    esac
    mv "$out.tmp.$$" "$out"
    log "initramfs $name: $(du -h "$out" | cut -f1) ($key)"
  fi
  rm -rf "$STAGE" "$STAGE.init" "$STAGE.agent" "$STAGE.list"
  echo "$out"
}

# ---------------------------------------------------------------- agent ----

# Exported: the cargo build below must put the agent where this script then looks for it
# (the checkout's .cargo/config.toml no longer names a target dir).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
TARGET_DIR=$CARGO_TARGET_DIR
AGENT_PROFILE=${KATA_RS_AGENT_PROFILE:-guest-agent}
# `debug` (or `dev`) is cargo's dev profile, which builds into target/debug.
case "$AGENT_PROFILE" in debug | dev) AGENT_PROFILE=dev AGENT_DIR=debug ;; *) AGENT_DIR=$AGENT_PROFILE ;; esac
AGENT=${KATA_RS_AGENT:-$TARGET_DIR/$AGENT_DIR/kata-agent}

build_agent() {
  [ -n "${KATA_RS_AGENT:-}" ] && return 0
  log "cargo build ($AGENT_PROFILE) -p kata-agent"
  (cd "$REPO_DIR" && nice -n 5 cargo build -q -p kata-agent --profile "$AGENT_PROFILE") ||
    die "the agent did not build; \`guest/build.sh --busybox-init\` builds the image without it"
}

# -------------------------------------------------------------- manifest ---

json_str() { if [ -n "$1" ]; then printf '"%s"' "$1"; else printf null; fi; }

# link NAME TARGET: atomically point current/NAME at TARGET (or remove it).
link() {
  local cur=$CACHE/guest/current
  if [ -n "$2" ]; then
    ln -sfn "$2" "$cur/.$1.tmp" && mv -T "$cur/.$1.tmp" "$cur/$1"
  else
    rm -f "$cur/$1"
  fi
}

write_manifest() {
  local initrd=$1 initrd_debug=$2 initrd_busybox=$3 agent_sha=$4 image=${5:-}
  mkdir -p "$CACHE/guest/current"
  local m=$CACHE/guest/manifest.json
  {
    printf '{\n'
    printf '  "kernel": %s,\n' "$(json_str "$KDIR/bzImage")"
    printf '  "vmlinux": %s,\n' "$(json_str "$KDIR/vmlinux")"
    printf '  "initrd": %s,\n' "$(json_str "$initrd")"
    printf '  "initrd_debug": %s,\n' "$(json_str "$initrd_debug")"
    printf '  "initrd_busybox": %s,\n' "$(json_str "$initrd_busybox")"
    printf '  "image": %s,\n' "$(json_str "$image")"
    printf '  "kernel_version": %s,\n' "$(json_str "$(cat "$KDIR/kernel_version")")"
    printf '  "kernel_source": %s,\n' "$(json_str "$SRC_PKG $PKG_VERSION")"
    printf '  "agent_sha256": %s,\n' "$(json_str "$agent_sha")"
    printf '  "fragment_sha256": %s\n' "$(json_str "$FRAGMENT_SHA")"
    printf '}\n'
  } >"$m.tmp.$$"
  mv "$m.tmp.$$" "$m"
  link vmlinuz "$KDIR/bzImage"
  link bzImage "$KDIR/bzImage"
  link vmlinux "$KDIR/vmlinux"
  link initrd.img "$initrd"
  link initrd-debug.img "$initrd_debug"
  link initrd-busybox.img "$initrd_busybox"
  link kata-containers.img "$image"
  link manifest.json "$m"
  log "manifest: $m"
}

# Each agent rebuild adds a content-keyed directory (~30 MB). Remove those that are
# not in the manifest, not among the 20 most recently used, and untouched for an
# hour (a test that read an older manifest has long since started its VM).
prune_initrds() {
  local dir=$CACHE/guest/initrd d
  local keep
  keep=$(ls -1t "$dir" | head -20)
  for d in "$dir"/*/; do
    d=${d%/}
    grep -qxF "$(basename "$d")" <<<"$keep" && continue
    grep -qF "$d/" "$CACHE/guest/manifest.json" && continue
    [ -n "$(find "$d" -maxdepth 0 -mmin +60)" ] && rm -rf "$d"
  done
  return 0
}

# ------------------------------------------------------------------ main ---

main() {
  local t0=$SECONDS
  mkdir -p "$CACHE/guest"
  build_kernel
  [ "$mode" = kernel ] && return 0

  # Serialise initramfs and manifest writers (cheap work, done under one lock).
  exec 9>"$CACHE/guest/.lock"
  flock 9
  ensure_gen_cpio
  local initrd= initrd_debug= agent_sha= initrd_busybox image=
  initrd_busybox=$(build_initrd initrd-busybox busybox)
  [ "$mode" = full ] && build_agent
  if [ -x "$AGENT" ]; then
    agent_sha=$(sha256 "$AGENT")
    initrd=$(build_initrd initrd agent "$AGENT")
    initrd_debug=$(build_initrd initrd-debug agent-debug "$AGENT")
    # Kata's rootfs image layout (guest/image.sh): the root on an NVDIMM or a virtio-blk disk.
    image=$("$GUEST_DIR/image.sh" "$AGENT")
  else
    log "no agent binary at $AGENT: manifest has initrd = null"
  fi
  write_manifest "$initrd" "$initrd_debug" "$initrd_busybox" "$agent_sha" "$image"
  prune_initrds
  log "done in $((SECONDS - t0))s"
}

main
