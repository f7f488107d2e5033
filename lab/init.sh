#!/bin/busybox sh
# /init of the nested lab's L1 (lab/README.md): loads the cloud kernel's modules, checks what
# L1 offers (KVM, vhost-vsock, the edu device behind an IOMMU bound to vfio-pci), mounts this
# host's root (virtio-fs, read-only) and runs the test program in it, then powers off.
#
# Every check prints one line: `lab-check <name> ok|fail <detail>`. The kernel command line
# says what to run: `lab.runner=<path>` (a path on the host's root) and `lab.args=<a,b,...>`;
# `lab.log=<filter>` is the runner's log filter (KATA_LAB_LOG, tracing's syntax); `lab.shell`
# gives a shell on the console instead of powering off (for debugging).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "lab-l1 init uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

RUNNER= ARGS= LOG=warn SHELL_AFTER=
for w in $(cat /proc/cmdline); do
  case "$w" in
    lab.runner=*) RUNNER=${w#*=} ;;
    lab.log=*) LOG=${w#*=} ;;
    lab.args=*) ARGS=$(echo "${w#*=}" | tr , ' ') ;;
    lab.shell) SHELL_AFTER=1 ;;
  esac
done

check() { echo "lab-check $1 $2 $3"; }

# load GROUP: insmod the group's modules (dependencies first, as lab/build.sh listed them).
load() {
  local ko name
  while read -r ko; do
    name=$(basename "$ko" .ko | tr - _)
    [ -d "/sys/module/$name" ] && continue
    insmod "$ko" || { echo "insmod $ko failed"; return 1; }
  done <"/etc/lab/modules.$1"
}

# The host's root, read-only (virtio-fs tag hostroot).
H=/host
if err=$(load fs 2>&1) && err=$(mount -t virtiofs -o ro hostroot $H 2>&1) && [ -x $H/bin/sh ]; then
  check l1-hostroot ok "virtio-fs hostroot mounted read-only at $H"
else
  check l1-hostroot fail "$(echo "$err" | tr '\n' ' ')"
fi

if err=$(load kvm 2>&1) && [ -c /dev/kvm ]; then
  check l1-kvm ok "/dev/kvm, kvm_amd nested=$(cat /sys/module/kvm_amd/parameters/nested), $(grep -c svm /proc/cpuinfo) cpu(s) with svm ($(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -x -E 'npt|vgif|v_vmsave_vmload|nrip_save|lbrv|vmcb_clean|flushbyasid|decodeassists|pausefilter|pfthreshold|avic|tsc_scale|svme_addr_chk' | tr '\n' ' '| sed 's/ $//'))"
else
  check l1-kvm fail "$(echo "$err" | tr '\n' ' ') /dev/kvm: $(ls -l /dev/kvm 2>&1)"
fi

if err=$(load vsock 2>&1) && [ -c /dev/vhost-vsock ]; then
  check l1-vhost-vsock ok "/dev/vhost-vsock"
else
  check l1-vhost-vsock fail "$(echo "$err" | tr '\n' ' ') /dev/vhost-vsock: $(ls -l /dev/vhost-vsock 2>&1)"
fi

# QEMU's edu device (1234:11e8) behind the emulated IOMMU, bound to vfio-pci: /dev/vfio/<group>.
vfio_edu() {
  local d bdf= group i
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && bdf=${d##*/}
  done
  [ -n "$bdf" ] || { echo "no edu device (1234:11e8) on the PCI bus"; return 1; }
  d=/sys/bus/pci/devices/$bdf
  [ -e "$d/iommu_group" ] || { echo "edu $bdf has no IOMMU group (intel_iommu=on?)"; return 1; }
  group=$(basename "$(readlink "$d/iommu_group")")
  load vfio || return 1
  echo "1234 11e8" >/sys/bus/pci/drivers/vfio-pci/new_id || return 1
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -c "/dev/vfio/$group" ] && break; sleep 0.2; done
  [ "$(basename "$(readlink "$d/driver")")" = vfio-pci ] || { echo "edu $bdf not bound to vfio-pci"; return 1; }
  [ -c "/dev/vfio/$group" ] || { echo "no /dev/vfio/$group"; return 1; }
  echo "edu $bdf in IOMMU group $group bound to vfio-pci: /dev/vfio/$group"
}
if out=$(vfio_edu 2>&1); then
  check l1-vfio-edu ok "$out"
else
  check l1-vfio-edu fail "$(echo "$out" | tr '\n' ' ')"
fi
# builtin-vfio-msix: the virtio-rng (1af4:1044, modern only, behind the IOMMU) taken from
# virtio-pci (if L1 bound it) onto vfio-pci; the runner checks its group and driver.
vfio_rng() {
  local d bdf=
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1044 ] && bdf=${d##*/}
  done
  [ -n "$bdf" ] || { echo "no virtio-rng (1af4:1044) on the PCI bus"; return 1; }
  d=/sys/bus/pci/devices/$bdf
  [ -d /sys/bus/pci/drivers/vfio-pci ] || { echo "no vfio-pci driver"; return 1; }
  echo vfio-pci >"$d/driver_override" || return 1
  if [ -e "$d/driver" ]; then echo "$bdf" >"$d/driver/unbind" || return 1; fi
  echo "$bdf" >/sys/bus/pci/drivers_probe
  [ "$(basename "$(readlink "$d/driver")")" = vfio-pci ] || { echo "virtio-rng $bdf not bound to vfio-pci"; return 1; }
  echo "virtio-rng $bdf in IOMMU group $(basename "$(readlink "$d/iommu_group")") bound to vfio-pci"
}
echo "lab-l1 vfio-rng: $(vfio_rng 2>&1 | tr '\n' ' ')"
load net >/dev/null 2>&1 || echo "lab-l1 warning: tun/overlay/veth/tc did not load"

# The test program runs in the host's root with writable tmpfs where it writes.
run_in_host_root() {
  mount -t proc proc $H/proc &&
  mount -t sysfs sysfs $H/sys &&
  mount -t devtmpfs devtmpfs $H/dev &&
  mkdir -p $H/dev/pts $H/dev/shm &&
  mount -t devpts devpts $H/dev/pts &&
  mount -t tmpfs tmpfs $H/dev/shm &&
  mount -t cgroup2 cgroup2 $H/sys/fs/cgroup &&
  mount -t tmpfs -o mode=0755 tmpfs $H/run &&
  mount -t tmpfs -o mode=1777 tmpfs $H/tmp &&
  mount -t tmpfs -o mode=0700 tmpfs $H/var/cache/kata-rs/lab/state || return 1
  echo "lab-l1 runner start uptime=$(cut -d' ' -f1 /proc/uptime)"
  # No RUST_LOG: the sandbox's virtiofsd inherits it, and kata-resource waits for the line
  # virtiofsd logs at info level (RUST_LOG=warn made every sandbox start fail after 10 s).
  # shellcheck disable=SC2086
  chroot $H /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/cache/kata-rs/lab/state TMPDIR=/tmp RUST_BACKTRACE=1 KATA_LAB_LOG="$LOG" \
    "$RUNNER" $ARGS
}
if [ -n "$RUNNER" ]; then
  run_in_host_root
  echo "lab-l1 runner exit=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
fi
echo "lab-l1 done uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -n "$SHELL_AFTER" ]; then setsid cttyhack sh; fi
poweroff -f
