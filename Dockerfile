# The project's image: the gateway, the workers and the operator tools (the command picks which).
# The builder turns the source into a wheel, with the wheels of every dependency and of the `otel` extra (tracing
# stays off until OTEL_* names an exporter: README, Tracing); the runtime installs from those wheels only
# (--no-index: no other index can stand in for the project's name), so the image holds exactly the packages and
# package data (samples, migrations) the wheel declares. tests/test_deploy.py repeats these steps
# without an engine and starts what they install.
FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY infra ./infra
COPY gateway ./gateway
COPY workers ./workers
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[otel]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=builder /wheels /wheels
# The versions are pinned by /wheels: one wheel of each package, built above from this source and its lock of floors.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels "hypercard-gateway[otel]" && rm -rf /wheels \
    && groupadd --system --gid 10001 hypercard \
    && useradd --system --uid 10001 --gid 10001 --no-create-home hypercard
USER 10001:10001

# The defaults of HC_PORT, HC_METRICS_PORT (a worker) and HC_GATEWAY_METRICS_PORT.
EXPOSE 8080 9100 9101
# The gateway is healthy when /readyz answers 200; a worker sets HC_HEALTHCHECK_URL to its metrics port.
ENV HC_HEALTHCHECK_URL=http://127.0.0.1:8080/readyz
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HC_HEALTHCHECK_URL'], timeout=4)"]
CMD ["hypercard-gateway"]
