#!/usr/bin/env bash
# guest/image.sh — builds Kata's guest rootfs image layout (`kata-containers.img`) with the
# kata-rs agent inside, without root mounts or loop devices, and prints its cached path.
#
#   guest/image.sh AGENT_BINARY
#
# The image is what Kata's image builder makes for an AGENT_INIT=yes rootfs: an ext4
# filesystem (4 KiB blocks, so the guest can mount it with DAX from an NVDIMM) holding
# `/usr/bin/kata-agent` with `/sbin/init` pointing at it, the agent's glibc libraries at their
# own paths, and the directories the agent mounts on; in Kata's DAX layout:
#
#   0       MBR, one Linux partition (0x83) at 3 MiB: what a virtio-blk disk shows (vda1)
#   4 KiB   the DAX info block (the kernel's nd_pfn_sb): the NVDIMM becomes an fsdax device
#           whose data starts at 2 MiB
#   2 MiB   MBR, one Linux partition at 1 MiB from here: what /dev/pmem0 shows (pmem0p1)
#   3 MiB   the filesystem, to the end; the total is a multiple of 2 MiB
#
# The kernel mounts the root (`root=/dev/pmem0p1` or `/dev/vda1`), devtmpfs lands on /dev by
# itself (CONFIG_DEVTMPFS_MOUNT), and the agent as PID 1 mounts the rest onto the empty
# directories. `/etc/resolv.conf` is a link into /run (a tmpfs), so the agent's CreateSandbox
# DNS write lands there on the read-only root.
#
# How it is made: the files are staged in a directory, `mkfs.ext4 -d` writes the filesystem
# into a separate file (no mount; with a 4 MiB journal: the kernel refuses Kata's
# `rootflags=data=ordered` on an ext4 without one), `e2fsck -fn` and `debugfs` check it, and
# the MBRs and the info block (printf'd) plus zero padding and the filesystem are
# concatenated. No root mount, loop device, sfdisk or parted.
#
# Cached as $KATA_RS_CACHE/guest/image/<key16>/kata-containers.img, the key being the sha256
# of this script, of the mke2fs version and of every staged file's bytes. The file owners
# are those of the staged copies (run as root, as `make guest` does: all 0:0).
#
# Environment: KATA_RS_CACHE (default /var/cache/kata-rs).
set -euo pipefail

CACHE=${KATA_RS_CACHE:-/var/cache/kata-rs}
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# Fixed mtimes and filesystem identity: two builds of the same inputs are byte-identical.
EPOCH=1704067200
FS_UUID=6b617461-2d72-4073-a96d-616765000001
HASH_SEED=6b617461-2d72-4073-a96d-616765000002
DAX_HEADER=$((2 * 1024 * 1024)) # the NVDIMM's metadata before its data (Kata's 2 MiB)
PART_START=$((1024 * 1024)) # the partition's first byte after the (inner) MBR: 1 MiB
ALIGN=$((2 * 1024 * 1024))  # the image's size is a multiple of this

log() { echo "guest image: $*" >&2; }
die() { echo "guest image: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 AGENT_BINARY"
AGENT=$1
[ -x "$AGENT" ] || die "no agent binary at $AGENT (build it: cargo build --release -p kata-agent)"
for tool in mkfs.ext4 e2fsck debugfs readelf ldd strip; do
  command -v "$tool" >/dev/null ||
    die "$tool is missing (apt-get install e2fsprogs binutils libc-bin)"
done

agent_libs() { # the ELF interpreter and the libraries ldd resolves, absolute paths
  local interp
  interp=$(readelf -l "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
  [ -n "$interp" ] && echo "$interp"
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
}

mkdir -p "$CACHE/guest/image"
STAGE=$(mktemp -d "$CACHE/guest/image/stage.XXXXXX")
trap 'rm -rf "$STAGE" "$STAGE.fs" "$STAGE.img" "$STAGE.pfn"' EXIT
ROOT=$STAGE/root
mkdir -p "$ROOT"

# The directories: Kata's rootfs layout, and every mount point the agent uses as PID 1
# (/proc /sys /dev /run /tmp; /dev/pts and /dev/shm are made on the devtmpfs).
for d in bin sbin usr/bin usr/sbin lib etc var mnt proc sys dev run tmp root; do
  mkdir -p "$ROOT/$d"
done
chmod 0755 "$ROOT"/*
chmod 0700 "$ROOT/root"
chmod 1777 "$ROOT/tmp"
strip --strip-all -o "$ROOT/usr/bin/kata-agent" "$AGENT"
chmod 0755 "$ROOT/usr/bin/kata-agent"
ln -s ../usr/bin/kata-agent "$ROOT/sbin/init"
for lib in $(agent_libs "$AGENT"); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
ln -s ../run/resolv.conf "$ROOT/etc/resolv.conf"
find "$ROOT" -exec touch -h -d "@$EPOCH" {} +

# The key: this script, the mkfs version and the staged tree (names, modes, link targets,
# file bytes).
key=$( {
  sha256sum "$SELF" | cut -d' ' -f1
  mkfs.ext4 -V 2>&1 | head -1
  (cd "$ROOT" && find . -printf '%p %M %l\n' | LC_ALL=C sort)
  (cd "$ROOT" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)
OUT=$CACHE/guest/image/$key/kata-containers.img
if [ -f "$OUT" ]; then
  touch "$(dirname "$OUT")" # in use again: keep it out of the pruning below
  echo "$OUT"
  exit 0
fi

# The filesystem: content plus a quarter and 8 MiB of headroom (journal, inodes, directories),
# rounded so that 1 MiB + the filesystem is a multiple of 2 MiB.
content=$(du -s --block-size=1 "$ROOT" | cut -f1)
fs_bytes=$((content + content / 4 + 8 * 1024 * 1024))
fs_bytes=$(( ((fs_bytes + PART_START + ALIGN - 1) / ALIGN) * ALIGN - PART_START ))
E2FSPROGS_FAKE_TIME=$EPOCH mkfs.ext4 -q -F -b 4096 -J size=4 -L kata-rootfs \
  -U "$FS_UUID" -E "root_owner=0:0,hash_seed=$HASH_SEED" -N 512 -m 0 \
  -d "$ROOT" "$STAGE.fs" "$((fs_bytes / 4096))" >&2 ||
  die "mkfs.ext4 failed on $STAGE.fs"
e2fsck -fn "$STAGE.fs" >/dev/null 2>&1 || die "e2fsck found errors in the new filesystem"
target=$(debugfs -R 'stat /sbin/init' "$STAGE.fs" 2>/dev/null | sed -n 's/^Fast link dest: "\(.*\)"/\1/p')
[ "$target" = ../usr/bin/kata-agent ] || die "/sbin/init in the new filesystem is '$target', not ../usr/bin/kata-agent"

# Bytes as printf escapes, little-endian: le16 N, le32 N, le64 N.
le() { local n=$1 i; for ((i = 0; i < $2; i++)); do printf '\\x%02x' $(((n >> (8 * i)) & 255)); done; }
le16() { le "$1" 2; }
le32() { le "$1" 4; }
le64() { le "$1" 8; }

# mbr START_LBA SECTORS: disk signature "kata", one primary partition of type 0x83 (Linux)
# (CHS fields saturated: LBA only), the 0x55AA boot signature. 512 bytes.
mbr() {
  head -c 440 /dev/zero
  printf 'kata\x00\x00'
  printf "\\x00\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32 "$1")$(le32 "$2")"
  head -c 48 /dev/zero
  printf '\x55\xaa'
}

# The NVDIMM's DAX info block (the kernel's `struct nd_pfn_sb`, what Kata's nsdax tool writes):
# read at 4 KiB into the namespace, it makes the guest's pmem driver an fsdax device whose
# data starts at DAX_HEADER (the inner MBR) and whose page structs live in guest RAM
# (mode 1, PFN_MODE_RAM: nothing is ever written to the read-only image). Without it the
# namespace is raw and ext4 refuses `dax` ("DAX unsupported by block device"). Version 1.4,
# 2 MiB alignment, parent uuid zero (a label-less namespace), Fletcher-64 checksum of the
# 4 KiB block over little-endian 32-bit words with the checksum field zero.
pfn_info_block() { # pfn_info_block TOTAL_BYTES > 4096 bytes
  local body=$STAGE.pfn
  {
    printf 'NVDIMM_PFN_INFO\x00'
    printf 'kata-rs-fsdax-01'                        # uuid
    head -c 16 /dev/zero                             # parent_uuid
    printf "$(le32 0)$(le16 1)$(le16 4)"             # flags, version 1.4
    printf "$(le64 $DAX_HEADER)"                     # dataoff
    printf "$(le64 $((($1 - DAX_HEADER) / 4096)))"  # npfns
    printf "$(le32 1)$(le32 0)$(le32 0)"             # mode RAM, start_pad, end_trunc
    printf "$(le32 $ALIGN)$(le32 4096)$(le16 64)"    # align, page_size, page_struct_size
    head -c 3994 /dev/zero                           # padding
  } >"$body"
  [ "$(stat -c %s "$body")" -eq 4088 ] || die "DAX info block is $(stat -c %s "$body") bytes, not 4088"
  local lo=0 hi=0 w
  for w in $(od -An -v -tu4 "$body"); do
    lo=$(((lo + w) & 0xffffffff))
    hi=$((hi + lo))
  done
  hi=$((hi + 2 * lo)) # the checksum field's two words, zero while summing
  cat "$body"
  printf "$(le64 $(((hi << 32) | lo)))"
}

# The layout (Kata's DAX image): [outer MBR][DAX info block at 4 KiB] up to DAX_HEADER, then
# [inner MBR] up to DAX_HEADER + PART_START, then the filesystem. The outer MBR's partition
# (sector 6144) is what a virtio-blk disk shows; the NVDIMM's pmem device starts at
# DAX_HEADER, where the inner MBR points at the same filesystem (sector 2048).
total=$((DAX_HEADER + PART_START + fs_bytes))
sectors=$((fs_bytes / 512))
{
  mbr $(((DAX_HEADER + PART_START) / 512)) "$sectors"
  head -c $((4096 - 512)) /dev/zero
  pfn_info_block "$total"
  head -c $((DAX_HEADER - 8192)) /dev/zero
  mbr $((PART_START / 512)) "$sectors"
  head -c $((PART_START - 512)) /dev/zero
  cat "$STAGE.fs"
} >"$STAGE.img"
size=$(stat -c %s "$STAGE.img")
[ $((size % ALIGN)) -eq 0 ] || die "image size $size is not a multiple of $ALIGN"
mkdir -p "$(dirname "$OUT")"
mv "$STAGE.img" "$OUT"
log "kata-containers.img: $((size / 1024 / 1024)) MiB ($key)"

# Each agent rebuild adds an image (~20 MiB): remove those not among the 10 most recently
# used and untouched for an hour (a test that read an older manifest has long started).
keep=$(ls -1t "$CACHE/guest/image" | grep -v '^stage\.' | head -10)
for d in "$CACHE/guest/image"/*/; do
  d=${d%/}
  case "$(basename "$d")" in stage.*) continue ;; esac
  grep -qxF "$(basename "$d")" <<<"$keep" && continue
  grep -qF "$d/" "$CACHE/guest/manifest.json" 2>/dev/null && continue
  [ -n "$(find "$d" -maxdepth 0 -mmin +60)" ] && rm -rf "$d"
done
echo "$OUT"
