# The container workflow (included by the top-level Makefile). Target and variable names are the
# Docker Port Activity Monitor's, so its users' commands keep working.

COMPOSE ?= docker-compose -p portwatch -f docker/compose.yml
IMAGE ?= portwatch:local
CONTAINER ?= portwatcher
# Defaults as in the reference monitor.
PORT ?= 5354
VERIFY_SINCE ?= 60
TRANSIENT_PORT ?= 5701
TRANSIENT_MS ?= 120
BURST_COUNT ?= 6
BASE_PORT ?= 5800
HOLD_MS ?= 120
INTERVAL_S ?= 0.03
# Watcher settings, passed through compose when set.
export SCAN_INTERVAL BURST_SCANS BURST_DELAY CLOSE_GRACE_MS SNAPSHOT_PATH RUST_LOG PORTWATCH_RECONCILE
export PORTWATCH_IMAGE := $(IMAGE)
# The host's cgroup2 mount, which the host-side watcher's eBPF programs attach to: the first
# in mountinfo (/sys/fs/cgroup on cgroup v2 hosts, /sys/fs/cgroup/unified on hybrid ones).
PORTWATCH_CGROUP2 ?= $(shell awk '/ - cgroup2 /{print $$5; exit}' /proc/self/mountinfo 2>/dev/null)
export PORTWATCH_CGROUP2

HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
STATIC_DIR := target/$(HOST_TRIPLE)/release
CONTEXT := target/docker/context

.PHONY: image run run-sv run-hf run-host logs logs-since verify-port-logs test-http test-udp \
	test-3000 kill-port test-tcp-transient test-udp-transient test-tcp-burst test-udp-burst \
	shell stop docker-clean verify-suite

# Static binaries (glibc, crt-static; --target keeps build scripts dynamic).
# Every source file, the eBPF object included: a shallower list let `make image` ship a binary
# older than crates/core/src/source/ebpf/.
$(STATIC_DIR)/portwatch $(STATIC_DIR)/examples/hold_port: $(shell find crates examples -name '*.rs') \
  $(wildcard crates/core/bpf/*.bpf.o) Cargo.toml crates/core/Cargo.toml Cargo.lock
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked \
	  --target $(HOST_TRIPLE) --bin portwatch --example hold_port

# busybox-static from Debian's archive (the only package source these machines reach).
target/docker/busybox:
	@mkdir -p target/docker/deb
	@if [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static; then \
	  cp /bin/busybox $@; \
	else \
	  cd target/docker/deb && { apt-get download busybox-static 2>/dev/null || \
	    { apt-get update -qq && apt-get download busybox-static; }; } && \
	  dpkg-deb -x busybox-static_*.deb x && cp x/bin/busybox ../busybox; \
	fi

# The offline image: FROM scratch, nothing pulled.
image: $(STATIC_DIR)/portwatch $(STATIC_DIR)/examples/hold_port target/docker/busybox
	@rm -rf $(CONTEXT) && mkdir -p $(CONTEXT)
	cp $(STATIC_DIR)/portwatch $(STATIC_DIR)/examples/hold_port target/docker/busybox \
	  docker/supervise.sh $(CONTEXT)/
	printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >$(CONTEXT)/passwd
	printf 'root:x:0:\nnogroup:x:65534:\n' >$(CONTEXT)/group
	docker build -q -f docker/Dockerfile.offline -t $(IMAGE) $(CONTEXT)

run: image
	$(COMPOSE) up -d --force-recreate portwatcher

run-sv: image
	$(COMPOSE) --profile sv up -d --force-recreate portwatcher-sv

run-hf: image
	$(COMPOSE) --profile hf up -d --force-recreate portwatcher-hf

# Watches the running `portwatcher` container from outside it.
run-host: image
	$(COMPOSE) --profile host up -d --force-recreate host-watcher

logs:
	docker logs -f $(CONTAINER)

logs-since:
	docker logs --since $(VERIFY_SINCE)s $(CONTAINER)

verify-port-logs:
	@docker logs --since $(VERIFY_SINCE)s $(CONTAINER) 2>&1 | \
	  grep -E "(New port opened|Port closed|Port owners changed): $(PORT) " || \
	  { echo "no events for port $(PORT) in the last $(VERIFY_SINCE)s"; exit 1; }

test-http:
	docker exec -d $(CONTAINER) httpd -f -p 5000 -h /tmp

test-udp:
	docker exec -d $(CONTAINER) hold_port udp $(PORT)

test-3000:
	docker exec -d $(CONTAINER) sh -c 'mkdir -p /tmp/www3000 && echo "Hello 3000" >/tmp/www3000/index.html && exec httpd -f -p 3000 -h /tmp/www3000'

# The owners come from portwatch itself, as JSON: the table's last column is `pid/comm,…`,
# and a process named `app,1` made the old parsing of it kill pid 1. docker/port-pids.sh
# (on this side) takes only the `pids` arrays, which no name can forge.
kill-port:
	@pids=$$(docker exec $(CONTAINER) portwatch list -t -u -p $(PORT) --format json | sh docker/port-pids.sh); \
	  [ -n "$$pids" ] || { echo "nothing listens on port $(PORT)" >&2; exit 1; }; \
	  echo "killing" $$pids; docker exec $(CONTAINER) kill $$pids

test-tcp-transient:
	docker exec $(CONTAINER) hold_port tcp $(TRANSIENT_PORT) $(TRANSIENT_MS)

test-udp-transient:
	docker exec $(CONTAINER) hold_port udp $(TRANSIENT_PORT) $(TRANSIENT_MS)

# BURST_COUNT listeners on BASE_PORT.., each held HOLD_MS, started INTERVAL_S apart; one exec,
# so docker's own latency does not space them out.
test-tcp-burst test-udp-burst:
	docker exec $(CONTAINER) sh -c 'i=0; while [ $$i -lt $(BURST_COUNT) ]; do \
	  hold_port $(if $(findstring udp,$@),udp,tcp) $$(($(BASE_PORT) + i)) $(HOLD_MS) & \
	  sleep $(INTERVAL_S); i=$$((i + 1)); done; wait'

shell:
	docker exec -it $(CONTAINER) sh

stop:
	$(COMPOSE) --profile sv --profile hf --profile host down --remove-orphans

docker-clean:
	-$(COMPOSE) --profile sv --profile hf --profile host down --volumes --remove-orphans
	-docker image rm $(IMAGE)
	rm -rf target/docker

verify-suite: image
	sh docker/verify-suite.sh
