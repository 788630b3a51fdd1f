#!/usr/bin/env bash
# `make dashboards`: queue dashboards on a plain machine. Switches on the local RabbitMQ's management and prometheus
# plugins (idempotent) and starts Prometheus (Debian package) with deploy/prometheus/local.yml and the alert rules,
# and Alertmanager (Debian package prometheus-alertmanager) with deploy/alertmanager/alertmanager.yml, then prints
# where to look. Settings (for tests or other ports): PROMETHEUS_PORT, ALERTMANAGER_PORT, DASHBOARDS_STATE,
# ALERTMANAGER_CONFIG (a file of your own), and GATEWAY_METRICS, WORKER_METRICS, RABBITMQ_METRICS as host:port.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${PROMETHEUS_PORT:-9090}
alertmanager_port=${ALERTMANAGER_PORT:-9093}
state=${DASHBOARDS_STATE:-.dev/prometheus}
python=${PYTHON:-python3}

if ! out=$(rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus 2>&1); then
    echo "make dashboards: could not switch on RabbitMQ's management and prometheus plugins:" >&2
    echo "$out" >&2
    echo "Run it as a user allowed to change the broker's plugins (root, or the rabbitmq user)." >&2
    exit 1
fi
if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null
fi

mkdir -p "$state"
sed -e "s/127.0.0.1:9101/${GATEWAY_METRICS:-127.0.0.1:9101}/" \
    -e "s/127.0.0.1:9100/${WORKER_METRICS:-127.0.0.1:9100}/" \
    -e "s/127.0.0.1:15692/${RABBITMQ_METRICS:-127.0.0.1:15692}/" \
    -e "s/127.0.0.1:9093/127.0.0.1:$alertmanager_port/" \
    deploy/prometheus/local.yml > "$state/prometheus.yml"
cp deploy/prometheus/alerts.yml "$state/alerts.yml"

cp "${ALERTMANAGER_CONFIG:-deploy/alertmanager/alertmanager.yml}" "$state/alertmanager.yml"

answers() { "$python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/-/ready', timeout=1)" 2>/dev/null; }
ready() { answers "$port"; }
reload() { "$python" -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$1/-/reload', method='POST'), timeout=5)" 2>/dev/null; }

# Alertmanager first, so that Prometheus finds it; alone, without a cluster to join.
if answers "$alertmanager_port"; then
    reload "$alertmanager_port" || echo "Alertmanager already answers on :$alertmanager_port (started elsewhere); its configuration was left as it is"
else
    nohup prometheus-alertmanager --config.file="$state/alertmanager.yml" --storage.path="$state/alertmanager" \
        --web.listen-address="127.0.0.1:$alertmanager_port" --cluster.listen-address= \
        >"$state/alertmanager.log" 2>&1 &
    echo $! > "$state/alertmanager.pid"
    for _ in $(seq 50); do answers "$alertmanager_port" && break; sleep 0.2; done
    answers "$alertmanager_port" || { echo "make dashboards: Alertmanager did not start; see $state/alertmanager.log" >&2; exit 1; }
fi
if ready; then
    reload "$port" || echo "Prometheus already answers on :$port (started elsewhere); its configuration was left as it is"
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
  Alertmanager, notifications:  http://127.0.0.1:$alertmanager_port/#/alerts   (sent to the receiver of $state/alertmanager.yml)
  Prometheus, a query:          http://127.0.0.1:$port/graph?g0.expr=sum%20by%20(queue)%20(rabbitmq_queue_messages%7Bqueue%3D~%22hypercard.*%22%7D)
Stop them with: kill \$(cat $state/prometheus.pid) \$(cat $state/alertmanager.pid)
INFO
