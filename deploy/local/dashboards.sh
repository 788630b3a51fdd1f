#!/usr/bin/env bash
# `make dashboards`: queue dashboards on a plain machine. Switches on the local RabbitMQ's management and prometheus
# plugins (idempotent) and starts Prometheus (Debian package) with deploy/prometheus/local.yml and the alert rules,
# then prints where to look. Settings (for tests or other ports): PROMETHEUS_PORT, DASHBOARDS_STATE, and
# GATEWAY_METRICS, WORKER_METRICS, RABBITMQ_METRICS as host:port.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${PROMETHEUS_PORT:-9090}
state=${DASHBOARDS_STATE:-.dev/prometheus}
python=${PYTHON:-python3}

if ! out=$(rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus 2>&1); then
    echo "make dashboards: could not switch on RabbitMQ's management and prometheus plugins:" >&2
    echo "$out" >&2
    echo "Run it as a user allowed to change the broker's plugins (root, or the rabbitmq user)." >&2
    exit 1
fi
if ! command -v prometheus >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

mkdir -p "$state"
sed -e "s/127.0.0.1:9101/${GATEWAY_METRICS:-127.0.0.1:9101}/" \
    -e "s/127.0.0.1:9100/${WORKER_METRICS:-127.0.0.1:9100}/" \
    -e "s/127.0.0.1:15692/${RABBITMQ_METRICS:-127.0.0.1:15692}/" \
    deploy/prometheus/local.yml > "$state/prometheus.yml"
cp deploy/prometheus/alerts.yml "$state/alerts.yml"

ready() { "$python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/-/ready', timeout=1)" 2>/dev/null; }
if ready; then
    "$python" -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/-/reload', method='POST'), timeout=5)" 2>/dev/null \
        || echo "Prometheus already answers on :$port (started elsewhere); its configuration was left as it is"
else
    nohup prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/data" \
        --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle >"$state/prometheus.log" 2>&1 &
    echo $! > "$state/prometheus.pid"
    for _ in $(seq 50); do ready && break; sleep 0.2; done
    ready || { echo "make dashboards: Prometheus did not start; see $state/prometheus.log" >&2; exit 1; }
fi

cat <<INFO
Queue dashboards are on:
  RabbitMQ management, queues:  http://127.0.0.1:15672/#/queues   (guest / guest)
  Prometheus, alerts:           http://127.0.0.1:$port/alerts
  Prometheus, scrape targets:   http://127.0.0.1:$port/targets
  Prometheus, a query:          http://127.0.0.1:$port/graph?g0.expr=sum%20by%20(queue)%20(rabbitmq_queue_messages%7Bqueue%3D~%22hypercard.*%22%7D)
Stop Prometheus with: kill \$(cat $state/prometheus.pid)
INFO
