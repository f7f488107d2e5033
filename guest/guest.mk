# guest/guest.mk — guest image targets; the top Makefile does `include guest/guest.mk`.
#
#   make guest          kernel + busybox initrd + agent initrds (cargo build -p kata-agent)
#                       + Kata's rootfs image layout (guest/image.sh: checked with e2fsck)
#   make guest-busybox  kernel + busybox initrd only (no cargo; for when the agent doesn't build)
#   make guest-smoke    boot checks under TCG: /init, ACPI power-off, vsock, 9p (PCI and MMIO)
#   make guest-bench    boot time of the busybox /init (BENCH_RUNS=3)
#
# Everything lands in $(KATA_RS_CACHE) (default /var/cache/kata-rs); the host crates
# read $(KATA_RS_CACHE)/guest/manifest.json. A second `make guest` takes seconds.

GUEST_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
BENCH_RUNS ?= 3

.PHONY: guest guest-busybox guest-smoke guest-bench

guest:
	$(GUEST_DIR)/build.sh

guest-busybox:
	$(GUEST_DIR)/build.sh --busybox-init

guest-smoke: guest-busybox
	$(GUEST_DIR)/smoke.sh

guest-bench: guest-busybox
	$(GUEST_DIR)/bench-boot.sh -n $(BENCH_RUNS)
