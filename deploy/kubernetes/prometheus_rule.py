"""Writes prometheusrule.yaml, the Prometheus operator's PrometheusRule, from deploy/prometheus/alerts.yml, the one
rules file (`make kubernetes-rules`; tests/test_kubernetes.py fails when the two differ)."""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "prometheus/alerts.yml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/alerts.yml by `make kubernetes-rules` (deploy/kubernetes/prometheus_rule.py): edit
# the rules there. README, "Monitoring", says what each alert means and what to do.
"""


def prometheus_rule() -> str:
    """The PrometheusRule object holding every group of the rules file, as YAML."""
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "hypercard", "labels": {"app.kubernetes.io/component": "monitoring"}},
        "spec": yaml.safe_load(RULES.read_text()),
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    TARGET.write_text(prometheus_rule())
    print(TARGET)
