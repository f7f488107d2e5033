# kata-rs: the two commands are `make demo` and `make test` (both as root on Debian 12).
#
# Everything heavy is cached outside the checkout, in $(KATA_RS_CACHE):
#   target/  cargo's target dir (one dir, one profile for build, clippy and tests)
#   kernel/  guest kernels keyed by linux-source version + config fragment hash
#   guest/   initramfs images + manifest.json (read by the host crates)
#   bin/     vhost-device-vsock (hybrid vsock backend, when /dev/vhost-vsock is absent)

export KATA_RS_CACHE ?= /var/cache/kata-rs
export CARGO_TARGET_DIR ?= $(KATA_RS_CACHE)/target
export PATH := $(HOME)/.cargo/bin:$(PATH)
# Counts the VM tests that really booted a guest (see tests' support code).
export KATA_RS_VM_TEST_LOG ?= $(KATA_RS_CACHE)/vm-tests.log
CARGO ?= cargo

.PHONY: all setup build demo test test-failed test-times test-unit lint package bench clean-cache vm-summary

all: build

include guest/guest.mk

setup:
	bash scripts/setup.sh
	@bash scripts/target-gc.sh

build: setup
	$(CARGO) build --workspace --all-targets

# Boots a micro-VM and runs `uname -a` in a busybox container from examples/hello.rs.
demo: setup guest
	$(CARGO) run -p kata-examples --example hello

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# As a crates.io user builds them: alone, without the workspace's feature unification
	@# (which hides a missing tokio feature, or a protobuf type that needs the agent's `server`).
	$(CARGO) clippy -q -p kata-shim --lib --bins -- -D warnings
	$(CARGO) clippy -q -p kata-sandbox --no-default-features -- -D warnings
	@# Every intra-doc link resolves and none points at a private item (docs.rs renders them).
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -q --workspace --no-deps
	@# Also with only their default features (a link to a feature-gated item breaks there).
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -q -p kata-hypervisor -p kata-agent-client --no-deps
	@if $(CARGO) tree -q -p kata-shim -e normal,features -i kata-agent-client | grep -q 'feature "server"'; then \
	  echo "lint: kata-shim pulls kata-agent-client's feature server: a protobuf type is reachable above the typed Agent API"; exit 1; fi

# Publishability of every library crate (no verify build: the workspace build covers it).
package:
	$(CARGO) package --workspace --no-verify --allow-dirty --exclude kata-examples --exclude kata-benches --exclude kata-testkit --exclude kata-fuzz --exclude kata-lab >/dev/null
	@echo "package: every publishable crate packages"

# The whole suite: unit, host integration, VM (QEMU), in that order.
# Each step's wall time goes to $(TIMES); the slow suites add theirs (testkit harness) to the VM
# test log. Both are printed at the end, so the budget of every tier stays visible.
TIMES := $(KATA_RS_CACHE)/make-test-times.log
timed = start=$$(date +%s); $(1) && echo "$(2) $$(( $$(date +%s) - start ))" >> $(TIMES)

test:
	@rm -f $(KATA_RS_VM_TEST_LOG) $(TIMES)
	@$(call timed,$(MAKE) --no-print-directory setup,setup)
	@$(call timed,$(MAKE) --no-print-directory guest,guest)
	@$(call timed,$(MAKE) --no-print-directory lint,lint)
	@$(call timed,$(MAKE) --no-print-directory package,package)
	@$(call timed,$(CARGO) test --workspace --all-targets --no-fail-fast,cargo-test) \
	  || { $(MAKE) --no-print-directory test-failed; exit 1; }
	@$(call timed,$(CARGO) test --workspace --doc --no-fail-fast,doc-tests)
	@$(MAKE) --no-print-directory vm-summary test-times

# After a failed cargo-test step: every failed case of the harness suites (VM, containerd, CRI,
# lab) with the start of its error, at the end of the log, where a CI log cut to its tail
# still shows them.
test-failed:
	@echo "make test: cargo test failed. Failed cases of the harness suites (from $(KATA_RS_VM_TEST_LOG)):"
	@if grep -q '^failed ' $(KATA_RS_VM_TEST_LOG) 2>/dev/null; then \
	   grep '^failed ' $(KATA_RS_VM_TEST_LOG) | sed 's/^failed /  /'; \
	 else echo "  none: a unit or host test failed (cargo's 'failures:' lists above name it)"; fi
	@grep '^lab-rerun ' $(KATA_RS_VM_TEST_LOG) 2>/dev/null | sed 's/^/  the nested lab needed another L1 run: /' || true
	@$(MAKE) --no-print-directory test-times

test-times:
	@echo "make test, wall time per step (the cargo-test step includes the suites below):"
	@while read -r step secs; do printf '  %-22s %5s s\n' "$$step" "$$secs"; done < $(TIMES)
	@grep '^time ' $(KATA_RS_VM_TEST_LOG) 2>/dev/null | while read -r _ suite secs; do printf '    %-20s %5s s\n' "$$suite" "$$secs"; done || true

vm-summary:
	@booted=$$(grep -c '^booted ' $(KATA_RS_VM_TEST_LOG) 2>/dev/null || true); \
	 failed=$$(grep -c '^no-guest ' $(KATA_RS_VM_TEST_LOG) 2>/dev/null || true); \
	 echo "VM tests: $${booted:-0} booted a real guest, $${failed:-0} could not boot one"; \
	 grep '^lab-rerun ' $(KATA_RS_VM_TEST_LOG) 2>/dev/null | sed 's/^/  the nested lab needed another L1 run: /' || true; \
	 if [ "$${failed:-0}" != "0" ]; then grep '^no-guest ' $(KATA_RS_VM_TEST_LOG); exit 1; fi; \
	 if [ "$${booted:-0}" = "0" ]; then echo "no VM test booted a guest: failing"; exit 1; fi

# Create/run/shutdown in a loop for DURATION seconds with leak accounting per iteration
# (kata-sandbox/tests/vm_many.rs); make test runs 3 iterations of it and 8 sandboxes at once.
DURATION ?= 300
.PHONY: soak
soak: setup guest
	KATA_RS_SOAK_SECS=$(DURATION) $(CARGO) test -p kata-sandbox --test vm_many -- soak_create_run_shutdown

# Coverage-guided fuzzing (fuzz/README.md): every target for FUZZ_SECS seconds, instrumented
# into its own target dir; `make test` replays the committed corpora (fuzz/tests/replay.rs).
FUZZ_SECS ?= 60
.PHONY: fuzz
fuzz:
	bash fuzz/run.sh $(FUZZ_SECS) $(FUZZ_TARGETS)

# Minimizes what `make fuzz` grew into the committed corpora (fuzz/cmin.sh: libFuzzer's merge,
# seeds kept), which `make test` replays; commit fuzz/corpus/ after it.
.PHONY: fuzz-cmin
fuzz-cmin:
	bash fuzz/cmin.sh $(FUZZ_TARGETS)

bench: setup guest
	$(CARGO) build --release -p kata-agent
	$(CARGO) bench -p kata-benches

# One self-contained HTML file of the figures (scripts/bench_report.py draws inline SVG from the
# boot_phases and density benches' JSON): start latency kata-rs vs runc, boot phases, PSS per
# pod, starts/s. Written to benches/report.html, which the README links.
.PHONY: bench-report
bench-report: setup guest
	$(CARGO) bench -p kata-benches --bench boot_phases --bench density --bench image_pss
	python3 scripts/bench_report.py --out benches/report.html

# kata-rs for containerd (scripts/install.sh; README "Install"): the shim and shim-ctl in
# $(PREFIX)/bin, the guest image `make guest` built, and the default configuration pointing at
# it, under Kata's names (containerd-shim-kata-v2, io.containerd.kata.v2,
# /usr/share/defaults/kata-containers/runtime-rs/configuration.toml) or, with
# KATA_RS_NAMES=own, kata-rs' own beside an installed Kata. DESTDIR for packaging; BIN_DIR=
# installs binaries built elsewhere (no cargo build). `make uninstall` (same PREFIX, DESTDIR
# and KATA_RS_NAMES) removes exactly what the install's manifest lists.
PREFIX ?= /usr/local
KATA_RS_NAMES ?= kata
.PHONY: install uninstall
install:
	$(if $(BIN_DIR),,$(CARGO) build --release -p kata-shim --bin containerd-shim-kata-v2 --bin shim-ctl)
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' KATA_RS_NAMES='$(KATA_RS_NAMES)' BIN_DIR='$(or $(BIN_DIR),$(CARGO_TARGET_DIR)/release)' bash scripts/install.sh install

uninstall:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' KATA_RS_NAMES='$(KATA_RS_NAMES)' bash scripts/install.sh uninstall
