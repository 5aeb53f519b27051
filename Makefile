# Thin wrapper over CMake. The two commands of the README:
#   make run    install what is missing, build, start cyan with ./data
#   make test   install what is missing, build, run every test
# Others: make build, make asan, make fuzz, make bench, make clean,
#   make install / make uninstall (PREFIX, DESTDIR; below), make man.
JOBS    ?= $(shell nproc)
BUILD   ?= build
ASAN    ?= build-asan
FUZZB   ?= build-fuzz
DATA    ?= data
CONF    ?= etc/cyan.conf
FUZZ_SECONDS ?= 20
PYTHON  := /usr/bin/python3

.PHONY: all build run test layers unit valgrind integration asan fuzz bench bench-latency bench-api bench-api-load bench-webhooks bench-coap bench-presence bench-durable bench-fleet clean deps deps-run deps-test install uninstall man

all: build

deps:
	@scripts/deps.sh build

deps-run:
	@scripts/deps.sh run

deps-test:
	@scripts/deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

asan: deps-test
	@cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DCYAN_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN) -j $(JOBS)

run: deps-run build
	@mkdir -p $(DATA)
	$(BUILD)/cyan -c $(CONF) --data_dir=$(DATA)

# Unit tests under ASan/UBSan, then again under valgrind; integration tests
# drive the ASan binary with real clients; each fuzzer runs briefly on its corpus.
test: deps-test build asan
	@$(MAKE) --no-print-directory layers unit valgrind integration fuzz

# The module graph: every include goes down a layer (docs/architecture.md).
layers:
	@$(PYTHON) scripts/layers.py

unit:
	@cd $(ASAN) && ctest --output-on-failure -j $(JOBS)

# Each program under valgrind is single-threaded: $(JOBS) of them at a time.
valgrind:
	@set -e; mkdir -p $(BUILD)/valgrind; \
	ls $(BUILD)/test_* | while read t; do [ -x "$$t" ] && echo "$$t"; done > $(BUILD)/valgrind/list; \
	xargs -P $(JOBS) -I{} sh -c 'log=$(BUILD)/valgrind/$$(basename {}).log; \
	  valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite {} >$$log 2>&1 \
	    || { cat $$log; echo "valgrind: {} failed"; exit 255; }' < $(BUILD)/valgrind/list; \
	echo "valgrind: $$(wc -l < $(BUILD)/valgrind/list) unit test programs clean"

# The whole MQTT suite runs on one shard and again on four: every behaviour
# must hold across shards exactly as on one. The shard fault, stall, drill,
# monitor and rules tests choose their own shard counts (or need none), and
# the canary, internal-device and histogram tests are about several shards,
# and so are systemd's notifications (ready once every shard accepts), the
# logs' per-shard summaries and the Particle paths (answered by the owner
# shard), and the attacks on the gateway's socket I/O (handovers, takeovers
# across shards; on one shard they are a subset), so they run once, with four
# (the limits too: they are counted for the whole node, which only several
# shards can show).
# The fault tests measure detection and recovery times, so they run first,
# alone on the machine; then the one-shard and the four-shard passes run side
# by side (each its own servers on their own ports), which keeps `make test`
# under 15 minutes on two cores. Each pass's output is printed whole when
# both are done.
INT_FAULTS = tests/integration/test_shards.py tests/integration/test_drill.py \
  tests/integration/test_stall_local.py tests/integration/test_monitor.py \
  tests/integration/test_coap_drill.py
INT_MULTI = tests/integration/test_prometheus_rules.py tests/integration/test_canary_client.py \
  tests/integration/test_internal_devices.py tests/integration/test_histograms.py \
  tests/integration/test_browser.py tests/integration/test_limits.py \
  tests/integration/test_notify.py tests/integration/test_logs.py \
  tests/integration/test_particle_paths.py \
  tests/integration/test_conn_io.py
# The four-shard pass is the longer: these files' four-shard run goes after
# the one-shard pass, in its stream, so both cores stay busy to the end.
INT_LATE = tests/integration/test_coaps.py tests/integration/test_limits.py \
  tests/integration/test_conn_io.py
# Files about the command line (its client commands too), the install, the
# README, the data folder's files and the HTTPS certificate, where the shard
# count changes nothing, the second attack pass on issue 15 (mostly the
# CLI and the API's input), and the files whose servers run one shard
# whatever the pass (a shard out of descriptors, the strace of one shard's
# acknowledgements): once, with one shard.
INT_ONE = tests/integration/test_cli.py tests/integration/test_docs.py tests/integration/test_file_modes.py \
  tests/integration/test_https.py tests/integration/test_install.py \
  tests/integration/test_readme.py tests/integration/test_cli_client.py \
  tests/integration/test_attack_i15.py tests/integration/test_descriptors.py \
  tests/integration/test_ack_order.py
PYTEST = $(PYTHON) -m pytest -q -p no:cacheprovider --durations=10
integration:
	@echo "integration: fault tests, 4 shards"
	@CYAN_SHARDS=4 CYAN_BIN=$(CURDIR)/$(ASAN)/cyan $(PYTEST) $(INT_FAULTS)
	@echo "integration: 1 shard and 4 shards, side by side"
	@mkdir -p $(ASAN)/integration
	@( CYAN_SHARDS=1 CYAN_BIN=$(CURDIR)/$(ASAN)/cyan $(PYTEST) tests/integration \
	     $(foreach f,$(INT_FAULTS) $(INT_MULTI),--ignore=$(f)) \
	     > $(ASAN)/integration/one.log 2>&1; echo $$? > $(ASAN)/integration/one.rc; \
	   CYAN_SHARDS=4 CYAN_BIN=$(CURDIR)/$(ASAN)/cyan $(PYTEST) $(INT_LATE) \
	     > $(ASAN)/integration/late.log 2>&1; echo $$? > $(ASAN)/integration/late.rc ) & \
	 CYAN_SHARDS=4 CYAN_BIN=$(CURDIR)/$(ASAN)/cyan $(PYTEST) tests/integration \
	     $(foreach f,$(INT_FAULTS) $(INT_ONE) $(INT_LATE),--ignore=$(f)) \
	     > $(ASAN)/integration/four.log 2>&1; echo $$? > $(ASAN)/integration/four.rc; \
	 wait; \
	 echo "---- 1 shard"; cat $(ASAN)/integration/one.log; \
	 echo "---- 4 shards"; cat $(ASAN)/integration/four.log; \
	 echo "---- 4 shards, after the 1-shard pass"; cat $(ASAN)/integration/late.log; \
	 for r in one four late; do test "$$(cat $(ASAN)/integration/$$r.rc)" = 0 || exit 1; done

# Each libFuzzer target (tests/fuzz/fuzz_<name>.c) runs on a copy of its
# seed corpus (what it finds stays in $(FUZZB)/corpus/<corpus>): the two
# codecs FUZZ_SECONDS each, the others (frames, API, config, webhook
# templates, the ACL file) FUZZ_SECONDS_MORE each (slower per
# input; here to catch what a change breaks, the long runs are by hand:
# docs/operations.md, "Fuzzing"). A crash, a leak, or any UBSan report (the
# fuzz build would let those go on) fails the target and leaves the input
# in $(FUZZB)/crash-* (or leak-*). Entries: target:corpus:seconds; $(JOBS)
# targets run at a time, the longest first.
FUZZ_SECONDS_MORE ?= 5
FUZZ_RUNS = mqtt_codec:mqtt:$(FUZZ_SECONDS) coap_codec:coap:$(FUZZ_SECONDS) \
  bus:bus:$(FUZZ_SECONDS_MORE) api:api:$(FUZZ_SECONDS_MORE) \
  config:config:$(FUZZ_SECONDS_MORE) render:render:$(FUZZ_SECONDS_MORE) \
  acl:acl:$(FUZZ_SECONDS_MORE)
fuzz: deps-test
	@CC=clang cmake -S . -B $(FUZZB) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DCYAN_FUZZ=ON >/dev/null
	@cmake --build $(FUZZB) -j $(JOBS) $(foreach r,$(FUZZ_RUNS),--target fuzz_$(word 1,$(subst :, ,$(r))))
	@for r in $(FUZZ_RUNS); do echo "$$r"; done | xargs -P $(JOBS) -I{} sh -c 'r={}; \
	  t=$${r%%:*}; c=$${r#*:}; s=$${c#*:}; c=$${c%%:*}; log=$(FUZZB)/fuzz_$$t.log; \
	  mkdir -p $(FUZZB)/corpus/$$c && cp tests/fuzz/corpus/$$c/* $(FUZZB)/corpus/$$c/; \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    $(FUZZB)/fuzz_$$t -max_total_time=$$s -print_final_stats=1 \
	    -artifact_prefix=$(FUZZB)/ $(FUZZB)/corpus/$$c > $$log 2>&1 \
	    || { tail -n 40 $$log; echo "fuzz_$$t failed"; exit 255; }; \
	  { echo "fuzz_$$t ($$s s):"; tail -n 5 $$log; }'

bench: build
	@scripts/deps.sh bench
	@bench/run.sh
	@BUILD=$(BUILD) bench/webhook_bench.sh
	@BUILD=$(BUILD) bench/coap_bench.sh
	@$(PYTHON) bench/presence_bench.py --cyan $(BUILD)/cyan
	@BUILD=$(BUILD) bench/durable_bench.sh
	@BUILD=$(BUILD) bench/fleet_bench.sh
	@BUILD=$(BUILD) bench/api_load.sh

# Only the main table's latency rows: one-to-one at a fixed rate (half of
# mosquitto's maximum), cyan 1 and 2 shards, cyan 1 shard with busy_poll_us,
# mosquitto; prints the table, docs/benchmarks.md untouched (bench/run.sh).
bench-latency: build
	@scripts/deps.sh bench
	@PHASES=latency RUNS=5 DOC=0 STRACE=0 UNPINNED=0 bench/run.sh

# QoS 1 into persistent sessions (stored before the PUBACK; store_sync
# normal and full) and one-to-one QoS 1 within and across shards, beside
# mosquitto with persistence (bench/durable_bench.sh).
bench-durable: build
	@scripts/deps.sh bench
	@BUILD=$(BUILD) bench/durable_bench.sh

# 150,000 idle devices on one node (shards enough for the descriptor limit):
# connect rate, memory per connection, keep-alive CPU, and the fleet's way
# back after a restart; mosquitto beside it up to its descriptor limit
# (bench/fleet_bench.sh, bench/fleet_bench.c; N=20000 or QUICK=1 for less).
bench-fleet: build
	@scripts/deps.sh bench
	@BUILD=$(BUILD) bench/fleet_bench.sh

# What status events (cyan/status) cost a reconnect storm of distinct
# devices: server CPU per connect-and-disconnect with them on and off
# (bench/presence_bench.py).
bench-presence: build
	@$(PYTHON) bench/presence_bench.py --cyan $(BUILD)/cyan

# Device events to a webhook: events/s to a fast local sink (bench/whsink.c)
# and the latency from PUBACK to the sink's receipt (bench/webhook_bench.sh).
bench-webhooks: build
	@scripts/deps.sh bench
	@BUILD=$(BUILD) bench/webhook_bench.sh

# Confirmable CoAP event posts per second from 2000 devices, cyan (1 shard)
# beside libcoap's coap-server-notls and cyan's MQTT QoS 1 ingest
# (bench/coap_bench.sh, bench/coap_bench.c).
bench-coap: build
	@scripts/deps.sh bench
	@BUILD=$(BUILD) bench/coap_bench.sh

# The function-call round trip through the HTTP API, beside the same exchange
# over plain MQTT (bench/api_bench.sh; DOC=1 writes docs/benchmarks.md).
# The bench packages come first: api_bench is built only when libcurl is there.
bench-api:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory build
	@BUILD=$(BUILD) bench/api_bench.sh

# Function calls under load: 1000 devices, C concurrent kept-alive HTTP
# callers (a raw client, bench/api_load.c), beside the same exchange over
# plain MQTT through mosquitto and cyan (bench/api_load.sh; DOC=1 writes
# docs/benchmarks.md; RUNS, SECONDS_RUN, CONNS, DEVICES, ROWS).
bench-api-load: build
	@scripts/deps.sh bench
	@BUILD=$(BUILD) bench/api_load.sh

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZB)

# Install what `make build` built (it does not build: run `make` first, as
# yourself, then `sudo make install`). DESTDIR stages into a folder (packages);
# PREFIX and SYSCONFDIR are where the files will live and are written into the
# unit. An existing configuration file is never overwritten: the new one goes
# beside it as cyan.conf.new. Without DESTDIR, as root, the cyan user is made
# (systemd-sysusers) unless SYSUSERS=no. docs/operations.md, "Install".
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
SYSCONFDIR ?= /etc
SYSUSERS   ?= auto
install:
	@test -x $(BUILD)/cyan || { echo "install: $(BUILD)/cyan is not built: run make first"; exit 1; }
	install -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(SYSCONFDIR)/cyan
	install -m 0755 $(BUILD)/cyan $(DESTDIR)$(BINDIR)/cyan
	install -m 0644 etc/cyan.1 $(DESTDIR)$(MANDIR)/man1/cyan.1
	sed -e 's|/usr/local/bin/cyan|$(BINDIR)/cyan|' -e 's|/etc/cyan/|$(SYSCONFDIR)/cyan/|' \
	  etc/cyan.service > $(DESTDIR)$(UNITDIR)/cyan.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/cyan.service.tmp
	mv $(DESTDIR)$(UNITDIR)/cyan.service.tmp $(DESTDIR)$(UNITDIR)/cyan.service
	install -m 0644 etc/cyan.sysusers $(DESTDIR)$(SYSUSERSDIR)/cyan.conf
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/cyan/cyan.conf ]; then \
	  install -m 0644 etc/cyan.conf $(DESTDIR)$(SYSCONFDIR)/cyan/cyan.conf.new; \
	  echo "install: kept $(DESTDIR)$(SYSCONFDIR)/cyan/cyan.conf; this version's is cyan.conf.new"; \
	else \
	  install -m 0644 etc/cyan.conf $(DESTDIR)$(SYSCONFDIR)/cyan/cyan.conf; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ "$(SYSUSERS)" != no ] && [ "$$(id -u)" = 0 ] && \
	    command -v systemd-sysusers >/dev/null; then \
	  systemd-sysusers $(SYSUSERSDIR)/cyan.conf; \
	fi
	@echo "install: done; under systemd: systemctl daemon-reload && systemctl enable --now cyan"

# Removes what install put there, except the configuration (yours) and
# the data (/var/lib/cyan) and the cyan user.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/cyan $(DESTDIR)$(MANDIR)/man1/cyan.1 \
	  $(DESTDIR)$(UNITDIR)/cyan.service $(DESTDIR)$(SYSUSERSDIR)/cyan.conf \
	  $(DESTDIR)$(SYSCONFDIR)/cyan/cyan.conf.new
	@echo "uninstall: left $(DESTDIR)$(SYSCONFDIR)/cyan/cyan.conf and the data folder"

# The generated files, from the binary (commit them with the change that
# made them differ: tests/integration/test_cli.py and test_install.py check).
man: build
	$(BUILD)/cyan man > etc/cyan.1
	$(BUILD)/cyan config > etc/cyan.conf
