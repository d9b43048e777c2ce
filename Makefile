# portwatch: build, test, lint and benchmark. CI (.ci/run) uses these same targets.
#
#   make build          release binary at target/release/portwatch
#   make test           the test suite (installs ss if this machine lacks it)
#   make man            man pages (portwatch.1, portwatch-list.1, portwatch-watch.1) in target/man
#   make lint           rustfmt, clippy (also core without features) and rustdoc, warnings
#                       denied; the fuzz targets compile
#   make bench          criterion benches of the hot paths
#   make bench-compare  whole-process timing against ss and lsof (run as root; BASELINE=PATH
#                       times another portwatch alongside)
#   make bench-fidelity what watch catches (by listener lifetime), how fast, and its idle CPU,
#                       for SOURCES (scan,ebpf), idle and beside BUSY busy loops (run as root)
#   make bench-netns    watch --all-netns over many namespaces: idle CPU, pick-up time
#   make bench-blinding list beside CROWD_PROCS processes of nobody with CROWD_FDS fds each
#                       (run as root; BASELINE=PATH times another portwatch beside it)
#   make soak           churn soak: DURATION s of RATE listeners/s under watch --source SOURCE
#                       (scan: with --hf), PER_PROCESS listeners per forked process; SCRAPE=S
#                       also scrapes --metrics every S s and checks it against the events
#   make bench-metrics  what watch --metrics costs: idle CPU and RSS with and without it, and
#                       one scrape at 1000 listeners (run as root)
#   make fuzz           each cargo-fuzz target in fuzz/ for FUZZ_SECONDS
#   make bpf            rebuild the committed eBPF objects crates/core/bpf/*.bpf.o
#   make bpf-check      fail if an object is not what its source builds to
#   make bench-ebpf     what the attached eBPF programs add to socket calls (run as root)
#   make bench-connections  what the connection programs add to a TCP connection (run as root)
#   make image          the offline container image; then run, run-sv, run-hf, run-host,
#                       test-http, kill-port, verify-suite, ... (docker/docker.mk)

CARGO ?= cargo
RUNS ?= 15
SIZES ?= 10x1,1000x200,10000x2000
COUNT ?= 100
IDLE_SECONDS ?= 20
FIDELITY_IDLE_SECONDS ?= 60
SOURCES ?= scan,ebpf
BUSY ?= $(shell echo $$((2 * $$(nproc))))
DURATION ?= 60
RATE ?= 200
SOURCE ?= scan
PER_PROCESS ?= 1
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := netlink proc_net proc_pid snapshot cli_args bpf_object bpf_kernel
NAMESPACES ?= 40
LISTENERS ?= 5
CROWD_PROCS ?= 40
CROWD_FDS ?= 20000
BLINDING_RUNS ?= 9

.PHONY: all build man test lint fmt doc bench bench-compare bench-fidelity bench-netns bench-metrics soak fuzz deps deps-bench clean \
	bpf bpf-check bpf-deps bpftool-deps bench-ebpf bench-connections bench-blinding

all: build

build:
	$(CARGO) build --release --locked

# Generated from the same clap definitions as --help (a hidden `portwatch man DIR`).
man:
	$(CARGO) run --locked --quiet -- man target/man
	@echo "man pages in target/man: man -l target/man/portwatch.1"

# Tools the tests call: ss and ip (iproute2) for the differential and namespace tests, unshare
# and setpriv (util-linux) and python3 for the namespace sandboxes and runs with chosen
# capabilities, systemd-analyze (systemd) to verify packaging/portwatch.service, pasta (passt)
# for a port rootless Podman's network publishes, strace (its fault injection makes bpf(2)
# refuse portwatch alone, as lockdown would), prometheus and
# promtool (Debian's prometheus, without the node exporter it recommends) to scrape
# `watch --metrics` for real. The tests run as root and call them by
# absolute path in the system directories (never through PATH), so that is where they must be.
# Tests skip, saying why, without them.
SYSTEM_BIN := /usr/sbin /usr/bin /sbin /bin
have = $(firstword $(wildcard $(addsuffix /$(1),$(SYSTEM_BIN))))
deps:
	@missing=""; \
	[ -n "$(call have,ss)" ] && [ -n "$(call have,ip)" ] || missing="$$missing iproute2"; \
	[ -n "$(call have,unshare)" ] && [ -n "$(call have,setpriv)" ] || missing="$$missing util-linux"; \
	[ -n "$(call have,systemd-analyze)" ] || missing="$$missing systemd"; \
	[ -n "$(call have,pasta)" ] || missing="$$missing passt"; \
	[ -n "$(call have,python3)" ] || missing="$$missing python3"; \
	[ -n "$(call have,strace)" ] || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else echo "make: missing$$missing: the tests that need them will skip"; fi; \
	fi
	@[ -n "$(call have,prometheus)" ] && [ -n "$(call have,promtool)" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "make: missing prometheus: the tests that need it will skip"; fi; }

# Tools bench-compare times against, and GNU time for peak memory.
deps-bench: deps
	@command -v lsof >/dev/null 2>&1 && [ -x /usr/bin/time ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq lsof time >/dev/null; \
	  else echo "make: lsof or /usr/bin/time not found: install lsof and time"; exit 1; fi; }

test: deps
	$(CARGO) test --workspace --all-features --locked

fmt:
	$(CARGO) fmt --all

# clippy checks std APIs against the MSRV (incompatible_msrv; rust-version in Cargo.toml and
# msrv in clippy.toml agree). portwatch-core is also linted without its optional features, as
# a library user builds it, and the fuzz targets (a crate of their own, outside the
# workspace) must still compile: plain `cargo check` on stable, no cargo-fuzz needed.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --all-features --locked -- -D warnings
	$(CARGO) clippy -p portwatch-core --all-targets --no-default-features --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --all-features --locked
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins --locked

doc:
	$(CARGO) doc --workspace --no-deps --all-features --open

bench:
	$(CARGO) bench --bench scan --locked

bench-compare: deps-bench build
	python3 benches/compare.py --runs $(RUNS) --sizes $(SIZES) --portwatch target/release/portwatch \
	  $(if $(BASELINE),--baseline $(BASELINE))

bench-fidelity: build
	python3 benches/fidelity.py --portwatch target/release/portwatch --count $(COUNT) \
	  --idle-seconds $(FIDELITY_IDLE_SECONDS) --source $(SOURCES) --busy $(BUSY)

bench-netns: build
	python3 benches/netns_idle.py --portwatch target/release/portwatch --namespaces $(NAMESPACES) --listeners $(LISTENERS) --idle-seconds $(IDLE_SECONDS)

bench-blinding: build
	python3 benches/blinding.py --portwatch target/release/portwatch $(if $(BASELINE),--portwatch $(BASELINE)) \
	  --procs $(CROWD_PROCS) --fds $(CROWD_FDS) --runs $(BLINDING_RUNS)

bench-metrics: build
	python3 benches/metrics_cost.py --portwatch target/release/portwatch --idle $(FIDELITY_IDLE_SECONDS) \
	  --runs $(RUNS)

soak: build
	python3 benches/soak.py --portwatch target/release/portwatch --duration $(DURATION) --rate $(RATE) \
	  --source $(SOURCE) --per-process $(PER_PROCESS) $(if $(SCRAPE),--scrape $(SCRAPE))

# Each target starts from its seeds (fuzz/seeds/TARGET: datagrams captured from this kernel,
# real /proc files, a snapshot a container wrote, the committed eBPF objects and their BTF)
# and grows fuzz/corpus/TARGET.
# cargo-fuzz needs the nightly -Z flags for sanitizer coverage; these machines have one stable
# toolchain, which RUSTC_BOOTSTRAP=1 lets take them (it unlocks nightly features on a stable
# compiler: fine for a fuzzing build, never for what we ship). `make lint` only checks that
# the targets compile, which stable does without the trick. Installs cargo-fuzz if missing.
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do mkdir -p corpus/$$t; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# The eBPF programs (feature `ebpf`): the event programs (portwatch.bpf.c), the owner iterator
# (owners.bpf.c), the connection programs (connections.bpf.c), one object each so that each is
# loaded alone. The objects are
# committed, so cargo never needs clang; these rebuild them. Debian's clang 14 / llvm /
# libbpf-dev headers; CO-RE, so no vmlinux.h from the build machine. Paths are relative and
# the debug prefix mapped, so the bytes depend only on the source and the toolchain: bpf-check
# rebuilds into a temp dir and compares.
BPF_DIR := crates/core/bpf
# Every crates/core/bpf/NAME.bpf.c builds to the committed NAME.bpf.o beside it.
BPF_SRCS := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -I$(BPF_DIR) \
	-I/usr/include/$(shell uname -m)-linux-gnu -fdebug-prefix-map=$(CURDIR)=.

bpf-deps:
	@command -v clang >/dev/null 2>&1 && command -v llvm-strip >/dev/null 2>&1 && \
	  [ -f /usr/include/bpf/bpf_helpers.h ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq clang llvm libbpf-dev >/dev/null; \
	  else echo "make: need clang, llvm (llvm-strip) and libbpf-dev headers"; exit 1; fi; }

# $(1): source, $(2): output object. Compile, then drop the DWARF (llvm-strip -g keeps
# .BTF/.BTF.ext, which CO-RE and the verifier's line info need).
bpf_build = clang $(BPF_CFLAGS) -c $(1) -o $(2) && llvm-strip -g $(2)

bpf: bpf-deps
	@for src in $(BPF_SRCS); do echo "bpf: $${src%.c}.o"; $(call bpf_build,$$src,$${src%.c}.o) || exit 1; done

bpf-check: bpf-deps
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	for src in $(BPF_SRCS); do obj=$${src%.c}.o; \
	  $(call bpf_build,$$src,$$tmp/out.o) || exit 1; \
	  if cmp -s $$tmp/out.o $$obj; then echo "bpf-check: $$obj is up to date"; \
	  else echo "bpf-check: $$obj differs from what $$src builds to:" \
	    "run 'make bpf' and commit the object (toolchain: $$(clang --version | head -1))"; exit 1; fi; \
	done

# bpftool, for the kernel's own per-program run times (the benches still run without it).
bpftool-deps:
	@command -v bpftool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq bpftool >/dev/null; \
	  else echo "make: bpftool not found: no per-program kernel run times"; fi; }

# The portwatch-core test binary, found in cargo's JSON messages: its ignored helpers
# (source::ebpf::tests::lifecycle::hold_for_kill, ...::connections::hold_connections) load and
# hold the programs, so the benches need no extra binary.
core_test_bin = $(CARGO) test --release --locked -p portwatch-core --features ebpf --no-run \
	  --message-format=json 2>/dev/null | python3 -c 'import json, sys; \
	  [print(m["executable"]) for m in map(json.loads, sys.stdin) \
	   if m.get("reason") == "compiler-artifact" and m.get("executable") \
	   and m["target"]["name"] == "portwatch_core"]' | tail -1

# What the listener programs add to socket calls.
bench-ebpf: bpftool-deps
	@bin=$$($(core_test_bin)) && \
	test -n "$$bin" && python3 benches/ebpf_cost.py --holder "$$bin" --rounds $(RUNS)

# What the connection programs (watch --connections) add to a TCP connection; same holder binary.
bench-connections: bpftool-deps
	@bin=$$($(core_test_bin)) && \
	test -n "$$bin" && python3 benches/conn_cost.py --holder "$$bin" --rounds $(RUNS)

# Containers, volumes and the image (when Docker answers), then the build.
clean:
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory docker-clean; fi
	$(CARGO) clean

include docker/docker.mk
