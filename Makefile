# Everything a newcomer needs: `make run` and `make test` set themselves up on a fresh machine.
# `make run` installs only what running needs; `make install` (and so `make test`) the rest.
SHELL := /bin/bash
PYTHON := $(shell scripts/find-python)
VENV := .venv
BIN := $(VENV)/bin
AZURITE_VERSION := 3.35.0
AZURITE := .tools/azurite/node_modules/.bin/azurite

.PHONY: install run test check lint format typecheck pytest image-test check-arm64 bench chaos \
        screenshot \
        azurite azurite-stop \
        dev-up dev-down docker-build docker-up docker-down docker-replicas-up docker-replicas-down \
        k3s-apply k3s-delete lock clean prometheusrule

install: $(BIN)/.installed $(AZURITE) .tools/fuse3.ok .tools/prometheus.ok .tools/tinyproxy.ok \
         .tools/chromium.ok .tools/wheels.ok

$(BIN)/.installed: pyproject.toml requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements-dev.lock -e ".[dev]"
	touch $@

# What running needs and nothing more: the pinned runtime dependencies (hashes checked), the
# project itself, and Azurite. No dev toolchain, no Debian packages.
$(BIN)/.run-installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(AZURITE):
	mkdir -p .tools/azurite
	npm install --prefix .tools/azurite --no-audit --no-fund --silent azurite@$(AZURITE_VERSION)

# The wheels `make run` installs (and hatchling with editables, which build the project), for
# the README walkthrough test: it runs `make run` in a fresh clone inside a network namespace, with no
# network, installing from here (tests/deploy/test_readme.py).
.tools/wheels.ok: requirements.lock $(BIN)/.installed
	mkdir -p .tools/wheels
	$(BIN)/python -m pip download --quiet --require-hashes -r requirements.lock -d .tools/wheels
	$(BIN)/python -m pip download --quiet hatchling editables -d .tools/wheels
	touch $@

# The NFS fault tests mount a FUSE filesystem: they need libfuse3 and fusermount3 (Debian's
# fuse3). Installed here when missing and we are root; otherwise those tests say why they skip.
.tools/fuse3.ok:
	mkdir -p .tools
	if ! command -v fusermount3 >/dev/null || ! ldconfig -p | grep -q libfuse3.so.3; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-3; \
	  else echo "fuse3 missing: the NFS fault tests will be skipped" >&2; fi; \
	fi
	touch $@

# The alert rule tests and the live dashboard test run Debian's prometheus and promtool.
# Installed here when missing and we are root; otherwise those tests say why they skip. Only
# the binaries are used: the tests start their own Prometheus on a free loopback port.
.tools/prometheus.ok:
	mkdir -p .tools
	if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else echo "prometheus missing: the alert and dashboard tests will be skipped" >&2; fi; \
	fi
	touch $@

# The proxy test sends storage traffic through Debian's tinyproxy (the binary alone, no daemon), started by the test on a
# loopback port. Installed here when missing and we are root; otherwise that test says why it
# skips.
.tools/tinyproxy.ok:
	mkdir -p .tools
	if ! command -v tinyproxy >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tinyproxy-bin; \
	  else echo "tinyproxy missing: the proxy test will be skipped" >&2; fi; \
	fi
	touch $@

# The status page's browser tests drive Debian's chromium with Playwright (whose own browser
# download cannot work here). Installed here when missing and we are root; otherwise those
# tests say why they skip (and fail under CI=true).
.tools/chromium.ok:
	mkdir -p .tools
	if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "chromium missing: the status page's browser tests will be skipped" >&2; fi; \
	fi
	touch $@

# --- Local development --------------------------------------------------------------------

run: $(BIN)/.run-installed $(AZURITE)
	scripts/run-dev

azurite: $(AZURITE)
	scripts/azurite-dev start

azurite-stop:
	scripts/azurite-dev stop

# --- Quality and tests ----------------------------------------------------------------------

lint: install
	$(BIN)/ruff check src tests bench

format: install
	$(BIN)/ruff format src tests bench

typecheck: install
	$(BIN)/pyright

pytest: install
	$(BIN)/python -m pytest -m "not image and not chaos"

check: lint typecheck
	$(BIN)/ruff format --check src tests bench

test: check pytest

# The Dockerfile built with podman and run like the pod (tests/deploy/test_image.py). On a machine with
# no image registry it uses ../shared/tools/container-env (or $CONTAINER_ENV) for podman and a
# stand-in base image. CI runs it after `make test`.
image-test: install
	$(BIN)/python -m pytest -m image

# Every pinned runtime dependency has a wheel for linux/arm64 (the Jetson). Needs PyPI.
check-arm64: install
	PYTHON=$(BIN)/python scripts/check-arm64

bench: install
	$(BIN)/python -m bench.run

# The README's screenshot of the status page (docs/status-page.png), taken by the browser test.
screenshot: install
	STATUS_PAGE_SCREENSHOT=docs/status-page.png $(BIN)/python -m pytest -q \
	  tests/system/test_status_page_in_a_browser.py -k "0_to_done"

# The seeded chaos run of three replicas (tests/system/replicas/test_chaos.py): several
# minutes of kills, pauses, stops and cut-offs while files arrive. CHAOS_SEED, CHAOS_SECONDS.
chaos: install
	$(BIN)/python -m pytest -m chaos -s -p no:cacheprovider

# Re-pin dependencies (needs network to PyPI).
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile --quiet --python-version 3.12 --generate-hashes pyproject.toml -o requirements.lock
	$(BIN)/uv pip compile --quiet --python-version 3.12 --extra dev pyproject.toml -o requirements-dev.lock

# k8s/monitoring/prometheusrule.yaml carries deploy/prometheus/alerts.yaml's groups under
# `spec:` (tests/deploy/test_alerts.py checks they are the same).
prometheusrule:
	f=k8s/monitoring/prometheusrule.yaml; \
	{ sed '/^spec:/q' $$f; sed -n '/^groups:/,$$p' deploy/prometheus/alerts.yaml | sed 's/^./  &/'; } > $$f.tmp \
	  && mv $$f.tmp $$f

# --- Containers and cluster (need a Docker engine / kubectl) ---------------------------------

dev-up:
	docker compose -f docker-compose.dev.yaml up -d

dev-down:
	docker compose -f docker-compose.dev.yaml down

docker-build:
	docker build -t nfs-watcher-uploader:latest .

docker-up: docker-build api-token.env
	mkdir -p data/incoming data/.processing
	docker compose up -d

# The API token docker-compose.yaml reads (git-ignored): a random one, readable by you only.
api-token.env:
	umask 077 && echo "APP_API_TOKEN=$$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > $@

docker-down:
	docker compose down

# Three replicas on ./data, coordinated through storage (README "Running N replicas").
docker-replicas-up: docker-build api-token.env
	mkdir -p data/incoming data/.processing
	docker compose -f docker-compose.replicas.yaml up -d

docker-replicas-down:
	docker compose -f docker-compose.replicas.yaml down

k3s-apply:
	kubectl apply -k k8s/

k3s-delete:
	kubectl delete -k k8s/

clean:
	-scripts/azurite-dev stop
	rm -rf data/ .ruff_cache .pytest_cache .tools
	find . -type d -name __pycache__ -prune -exec rm -rf {} +
