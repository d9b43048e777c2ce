# portwatch: build, test, lint and benchmark. CI (.ci/run) uses these same targets.
#
#   make build          release binary at target/release/portwatch
#   make test           the test suite (installs ss if this machine lacks it)
#   make lint           rustfmt, clippy and rustdoc, warnings denied
#   make bench          criterion benches of the hot paths
#   make bench-compare  whole-process timing against ss and lsof (run as root)
#   make bench-fidelity what watch catches (by listener lifetime) and its idle CPU

CARGO ?= cargo
RUNS ?= 15
SIZES ?= 10x1,1000x200,10000x2000
COUNT ?= 100
IDLE_SECONDS ?= 20

.PHONY: all build test lint fmt doc bench bench-compare bench-fidelity deps deps-bench clean

all: build

build:
	$(CARGO) build --release --locked

# Tools the tests call: ss and ip (iproute2) for the differential and namespace tests, unshare
# (util-linux) and python3 for the namespace sandboxes. Tests skip, saying why, without them.
deps:
	@missing=""; \
	command -v ss >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v unshare >/dev/null 2>&1 || missing="$$missing util-linux"; \
	command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else echo "make: missing$$missing: the tests that need them will skip"; fi; \
	fi

# Tools bench-compare times against.
deps-bench: deps
	@command -v lsof >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq lsof >/dev/null; \
	  else echo "make: lsof not found: install lsof"; exit 1; fi; }

test: deps
	$(CARGO) test --workspace --all-features --locked

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --all-features --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --all-features --locked

doc:
	$(CARGO) doc --workspace --no-deps --all-features --open

bench:
	$(CARGO) bench --bench scan --locked

bench-compare: deps-bench build
	python3 benches/compare.py --runs $(RUNS) --sizes $(SIZES) --portwatch target/release/portwatch

bench-fidelity: build
	python3 benches/fidelity.py --portwatch target/release/portwatch --count $(COUNT) --idle-seconds $(IDLE_SECONDS)

clean:
	$(CARGO) clean
