# The project's image: the gateway, the workers and the operator tools (the command picks which).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY gateway ./gateway
COPY workers ./workers
RUN pip install . && useradd --system --uid 10001 hypercard
USER hypercard

EXPOSE 8080 9100
CMD ["hypercard-gateway"]
