# `make run` and `make test` each work alone on a fresh clone: they create
# .venv and (re)install into it when pyproject.toml is newer than the install.
# Debian's python3.11 where it has venv, else the first python3.11 on PATH. On the
# machines here that is pyenv's 3.11.7, built with a shared libpython and without
# profile-guided optimisation: it runs pure Python about a quarter slower than Debian's,
# and a node takes about 9% more CPU a message on it (docs/PERFORMANCE.md, twenty-sixth
# session). A country's node on Debian runs on Debian's.
PYTHON ?= $(or $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null \
	&& echo /usr/bin/python3.11),python3.11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The interpreter .venv was made from: when $(PYTHON) is another, .venv is made again.
MADE_FROM := $(VENV)/.made-from
BENCH_STAMP := $(VENV)/.installed-bench
# `make bench` writes every figure here, then prints them in one table;
# `make bench QUICK=1` is a smoke run of the whole suite (small counts, minutes);
# `make bench APPEND=1` adds the table and the machine to docs/PERFORMANCE.md.
RESULTS := var/bench/results.jsonl
BENCH_ARGS := --results $(RESULTS) $(if $(QUICK),--quick)

.PHONY: run test lint typecheck bench bench-quick clean system-deps vectors fixtures timezones FORCE

$(MADE_FROM): FORCE
	@echo '$(PYTHON)' | cmp -s - $@ || { rm -rf $(VENV) && mkdir -p $(VENV) && echo '$(PYTHON)' > $@; }

$(STAMP): pyproject.toml $(MADE_FROM)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# matplotlib only for the benchmarks' plot: kept out of the core and the tests.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

run: $(STAMP)
	$(BIN)/cpn up nodes

# The protocol's test vectors (docs/PROTOCOL.md), from fixed keys; tests/test_vectors.py
# checks the implementation against the files: a change there is a change of the wire.
vectors: $(STAMP)
	PYTHONPATH=. $(BIN)/python tests/vectors/generate.py

# Store files made by the code of each earlier schema version (git worktrees of the
# commits named in the script); tests/test_store.py migrates each and verifies it.
fixtures: $(STAMP)
	$(BIN)/python tests/fixtures/make_stores.py

# The IANA time zone names bodies are checked against, from this machine's tz database.
timezones: $(STAMP)
	$(BIN)/python tests/fixtures/make_timezones.py

lint: $(STAMP)
	$(BIN)/ruff check network tests bench tools
	$(BIN)/ruff format --check network tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

# From Debian, when missing: Chromium for the console's browser tests (Playwright's own
# download does not work here), libfaketime for the clock-skew tests (tests/faults),
# systemd for `systemd-analyze verify` of deploy/cpn-node@.service (tests/test_deploy.py),
# SoftHSM2 for a node whose signing key is in a PKCS#11 token (tests/test_hsm.py),
# strace to make a node's disk slow (its fsyncs delayed: tests/faults/test_disk.py),
# python3.11-venv for a .venv made from Debian's python3.11 (`PYTHON`, read after this).
# `make test` installs them itself, so that it passes on a fresh machine.
system-deps:
	@missing=""; \
	[ ! -x /usr/bin/python3.11 ] || /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null \
	  || missing="$$missing python3.11-venv"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || missing="$$missing faketime"; \
	[ -x /usr/bin/systemd-analyze ] || missing="$$missing systemd"; \
	[ -e /usr/lib/softhsm/libsofthsm2.so ] || missing="$$missing softhsm2"; \
	[ -x /usr/bin/strace ] || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	  echo "installing from Debian:$$missing"; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi

test: system-deps lint typecheck
	$(BIN)/pytest -q

bench: $(BENCH_STAMP)
	@mkdir -p $(dir $(RESULTS)) && rm -f $(RESULTS)
	$(BIN)/python bench/envelope.py $(BENCH_ARGS)
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)
	$(BIN)/python bench/flash_path.py $(BENCH_ARGS)
	$(BIN)/python bench/relay.py $(BENCH_ARGS)
	$(BIN)/python bench/receipts_back.py $(BENCH_ARGS)
	$(BIN)/python bench/recovery.py $(BENCH_ARGS)
	$(BIN)/python bench/search.py $(BENCH_ARGS)
	$(BIN)/python bench/attachments.py $(BENCH_ARGS)
	$(BIN)/python bench/audit.py $(BENCH_ARGS)
	$(BIN)/python bench/store_writes.py $(BENCH_ARGS)
	$(BIN)/python bench/network_sim.py $(BENCH_ARGS)
	$(BIN)/python bench/faults.py --runs $(if $(QUICK),25,300)
	$(BIN)/python bench/fuzz.py $(if $(QUICK),--examples 500)
	$(BIN)/python bench/report.py $(RESULTS) $(if $(QUICK),,--plot docs/latency-vs-load.png) \
		$(if $(APPEND),--append docs/PERFORMANCE.md)

bench-quick:
	$(MAKE) bench QUICK=1

clean:
	rm -rf $(VENV) var build *.egg-info
