# The project's image: the gateway, the workers and the operator tools (the command picks which).
# Every package comes from requirements.lock: one version each, with its hashes (pip-compile from pyproject.toml,
# the `otel` extra and the build's setuptools: `make lock`), so nothing is resolved at build time and a file that
# is not the one locked stops the build. The builder downloads them and builds the project's own wheel (no build
# isolation: the locked setuptools); the runtime installs from those wheels only (--no-index: no other index can
# stand in for a name), so the image holds exactly the locked packages and the package data (samples, migrations)
# the wheel declares. Tracing stays off until OTEL_* names an exporter (README, Tracing).
# tests/test_deploy.py repeats these steps without an engine and starts what they install.
FROM python:3.11-slim AS builder
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY schemas ./schemas
COPY infra ./infra
COPY gateway ./gateway
COPY workers ./workers
RUN pip install --no-cache-dir --require-hashes -r requirements.lock \
    && pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock \
    && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=builder /wheels /wheels
COPY requirements.lock /wheels/
RUN pip install --no-cache-dir --no-index --find-links /wheels --require-hashes -r /wheels/requirements.lock \
    && pip install --no-cache-dir --no-index --no-deps /wheels/hypercard_gateway-*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 hypercard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home hypercard
USER 10001:10001

# The defaults of HC_PORT, HC_METRICS_PORT (a worker) and HC_GATEWAY_METRICS_PORT.
EXPOSE 8080 9100 9101
# The gateway is healthy when /readyz answers 200; a worker sets HC_HEALTHCHECK_URL to its health port's /livez.
ENV HC_HEALTHCHECK_URL=http://127.0.0.1:8080/readyz
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HC_HEALTHCHECK_URL'], timeout=4)"]
CMD ["hypercard-gateway"]
