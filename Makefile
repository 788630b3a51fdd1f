# The two Quick start commands: `make run` (the whole system) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEV_KEYS := .dev
DEV_ID_SECRET := $(DEV_KEYS)/id-secret
export HC_PLATFORM_PUBLIC_KEY ?= $(CURDIR)/$(DEV_KEYS)/platform-public.pem

.PHONY: run test lint install tools bench clean dashboards audit kubernetes-rules lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

$(DEV_KEYS)/platform-public.pem: | install
	$(BIN)/hypercard-send --generate-keys $(DEV_KEYS)

# The development HC_ID_SECRET, which keys event ids and inbox keys; kept, so de-duplication holds across runs.
$(DEV_ID_SECRET):
	@mkdir -p $(DEV_KEYS)
	@umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_hex(32))' > $@

# The gateway and one worker process for every kind; Ctrl-C stops both. The development merchant's api key is the
# one hypercard-send sends by default.
run: export HC_API_KEY ?= dev-merchant
run: export HC_ID_SECRET ?= $(shell cat $(DEV_ID_SECRET) 2>/dev/null)
run: install $(DEV_KEYS)/platform-public.pem $(DEV_ID_SECRET)
	@echo "Gateway on http://127.0.0.1:8080/hc_sync/common, signature checking on (key $(HC_PLATFORM_PUBLIC_KEY))."
	@echo "Send a signed sample from another terminal:  $(BIN)/hypercard-send open_card   (or: all)"
	@$(BIN)/hypercard-run

# The local broker's management and prometheus plugins, Prometheus scraping the local system and Alertmanager (README,
# Monitoring).
dashboards: install
	@PYTHON=$(BIN)/python deploy/local/dashboards.sh

# promtool, haproxy, amtool and docker-compose check the deployment files in the tests, and Prometheus and
# Alertmanager run in them (Debian packages prometheus, prometheus-alertmanager, haproxy and docker-compose).
tools:
	@command -v promtool >/dev/null && command -v haproxy >/dev/null && command -v docker-compose >/dev/null && \
		command -v prometheus-alertmanager >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager \
			haproxy docker-compose >/dev/null)

# deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/alerts.yml, after a change there (a test checks).
kubernetes-rules: install
	$(BIN)/python deploy/kubernetes/prometheus_rule.py

# Both stop in one line when the local broker has too few file handles left (README, Tests: the broker's limits).
test: install tools
	@$(BIN)/python -m infra.headroom --for tests
	$(BIN)/pytest

# Not part of the tests: prints the gateway next to its ceilings (needs wrk).
bench: install
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@$(BIN)/python -m infra.headroom --for bench
	$(BIN)/python -m bench

# Known vulnerabilities of the packages the image installs: requirements.lock, every file checked against its hashes
# (pip-audit, installed here as `make bench` installs its extras). It reads PyPI's advisory data over the network;
# --strict fails when a package could not be checked.
audit: install
	$(BIN)/pip install --quiet pip-audit
	$(BIN)/pip-audit --strict -r requirements.lock --require-hashes

# requirements.lock again from pyproject.toml (the dependencies, the otel extra, the build's setuptools), one version
# of each with its hashes: after a change of the dependencies (tests/test_lock.py says when), or to take updates.
lock: install
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras --all-build-deps \
		--no-emit-index-url --no-emit-find-links --extra otel --output-file requirements.lock pyproject.toml

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) $(DEV_KEYS) *.egg-info
