# edgenode: every target bootstraps the pinned Deno from the npm registry when it is not on PATH.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

DENO_VERSION := 2.9.6
TOOLS := .tools
LOCAL_DENO := $(TOOLS)/node_modules/.bin/deno
# Use a deno on PATH only when it is the pinned version; otherwise the one bootstrapped into .tools/.
PATH_DENO := $(shell d=$$(command -v deno 2>/dev/null) && "$$d" --version 2>/dev/null | grep -q "^deno $(DENO_VERSION) " && echo "$$d")
DENO := $(or $(PATH_DENO),$(LOCAL_DENO))
export NO_COLOR := 1
# deno compile reads DENORT_BIN from the environment: pass `make build DENORT_BIN=...` through.
ifdef DENORT_BIN
export DENORT_BIN
endif

# Real peers from Debian: the scheduler's streaming test runs VLC (RTSP server) and ffprobe; the presentation test and
# demo run ffmpeg (sources, the transcoder) with a DejaVu font for the burnt-in clock; the cluster tests run etcd and
# build network namespaces (iproute2: ip netns, tc netem); the node's real-time priority resets its children with
# util-linux's chrt; the dashboard's browser test runs headless Chromium; the TCP benchmark runs nginx, HAProxy and
# wrk. Installed with apt-get (as root, else through sudo) when missing.
TEST_PACKAGES := vlc-bin vlc-plugin-base ffmpeg fonts-dejavu-core haproxy etcd-server iproute2 util-linux chromium wrk keepalived curl nginx-light
BENCH_PACKAGES := nginx-light haproxy wrk
define apt_install
	@pkgs=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || pkgs="$$pkgs $$p"; done; \
	if [ -n "$$pkgs" ]; then \
	  echo "make: installing Debian packages:$$pkgs"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs; \
	fi
endef

.PHONY: help deps test-peers bench-peers run test bench demo testbed build check clean

help:
	@echo "make run    start edgenode on its embedded default config (status on http://127.0.0.1:8080/status)"
	@echo "make test   format check, lint, type check and every test (installs VLC, ffmpeg and HAProxy from Debian if missing)"
	@echo "make bench  run the benchmarks in tests/bench (installs nginx, HAProxy and wrk from Debian if missing)"
	@echo "make testbed  the report's four nodes in network namespaces with etcd (root; ARGS=\"--seconds 60\" or --bridge)"
	@echo "make demo   the report's lecture (Appendix A) on one node with ffmpeg sources; prints what arrived, saves frames"
	@echo "make build  compile dist/edgenode (needs the Deno base runtime: see README, DENORT_BIN)"
	@echo "make check  validate config/*.yaml without starting anything"

$(LOCAL_DENO):
	@echo "make: deno $(DENO_VERSION) not on PATH; installing it from the npm registry into $(TOOLS)/"
	@mkdir -p $(TOOLS)
	@[ -f $(TOOLS)/package.json ] || echo '{ "private": true }' > $(TOOLS)/package.json
	npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error deno@$(DENO_VERSION)
	@$(LOCAL_DENO) --version | head -n 1

deps: $(if $(PATH_DENO),,$(LOCAL_DENO))
	@$(DENO) install --frozen --quiet

run: deps
	@echo "edgenode: status at http://127.0.0.1:8080/status and /metrics; Ctrl-C stops it"
	@$(DENO) task --quiet edgenode $(ARGS)

# The examples take their token from the environment; --check binds nothing, so a placeholder is enough.
check: deps
	@export EDGENODE_TOKEN=$${EDGENODE_TOKEN:-placeholder-token-for-check}; for f in config/*.yaml; do $(DENO) task --quiet edgenode --check --config "$$f"; done

# The report's four nodes in network namespaces (root): etcd in Brno, one edgenode per city; Ctrl-C stops it.
testbed: deps test-peers
	$(DENO) run --allow-run --allow-net --allow-read --allow-write --allow-env scripts/testbed.ts $(ARGS)

test-peers:
	$(call apt_install,$(TEST_PACKAGES))

bench-peers:
	$(call apt_install,$(BENCH_PACKAGES))

test: deps test-peers
	$(DENO) fmt --check
	$(DENO) lint
	$(DENO) check main.ts lib/ tests/ scripts/
	@$(DENO) task --quiet test 2>&1 | tee .test-output.log; \
	  status=$${PIPESTATUS[0]}; \
	  sed -n 's/^\(ok\|FAILED\) | \([0-9]*\) passed.*| \([0-9]*\) failed.*/tests: \2 passed, \3 failed/p' .test-output.log; \
	  rm -f .test-output.log; exit $$status

bench: deps bench-peers
	$(DENO) task bench

# The report's scenario on one node: DEMO_SECONDS of sources, results and PNG frames in DEMO_OUT (default demo-out/).
demo: deps test-peers
	$(DENO) run --allow-run --allow-read --allow-write --allow-env --allow-net=127.0.0.1 --allow-sys=uid tests/demo/presentation.ts $(ARGS)

build: deps
	@mkdir -p dist
	@if ! $(DENO) task --quiet build 2> dist/.build.log; then \
	  cat dist/.build.log >&2; \
	  if grep -qi "base binary\|denort\|dl.deno.land" dist/.build.log; then \
	    echo "make build: deno compile could not get the Deno base runtime (denort $(DENO_VERSION)) from its download host." >&2; \
	    echo "make build: download denort-x86_64-unknown-linux-gnu.zip for v$(DENO_VERSION) where that host is reachable," >&2; \
	    echo "make build: unzip it here and run: make build DENORT_BIN=/path/to/denort" >&2; \
	  fi; \
	  exit 1; \
	fi
	@rm -f dist/.build.log
	@echo "make build: dist/edgenode ($$(du -h dist/edgenode | cut -f1))"

clean:
	rm -rf dist node_modules .bench
