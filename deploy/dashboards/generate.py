#!/usr/bin/env python3
"""Writes the Grafana dashboards in this directory from the panel list below.

Every query is plain PromQL over the metrics Sovra serves (no Grafana
variables), so tests/tests/api/prometheus.rs can run each one against a real
Prometheus and require data. Run after changing a panel:
    python3 deploy/dashboards/generate.py
"""
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
ERRORS = 'rpc_grpc_status_code!="0"'


def svc(name):
    return f'rpc_service=~"sovra\\\\.{name}\\\\..*"'


def red(sel, title):
    """Rate, errors by code and latency for the RPCs `sel` selects."""
    return [
        (f"{title}: requests per second by method",
         f"sum by (rpc_service, rpc_method) (rate(rpc_server_requests_total{{{sel}}}[1m]))", "reqps"),
        (f"{title}: errors per second by status code",
         f"sum by (rpc_grpc_status_code) (rate(rpc_server_requests_total{{{sel},{ERRORS}}}[1m]))", "reqps"),
        (f"{title}: error ratio",
         f"(sum(rate(rpc_server_requests_total{{{sel},{ERRORS}}}[1m])) or vector(0)) "
         f"/ sum(rate(rpc_server_requests_total{{{sel}}}[1m]))", "percentunit"),
        (f"{title}: p99 latency",
         f"histogram_quantile(0.99, sum by (le) (rate(rpc_server_duration_seconds_bucket{{{sel}}}[1m])))", "s"),
    ]


POOL = [("Database connections in use",
         "sum by (service, pool) (sovra_db_pool_connections_in_use)", "short")]

DASHBOARDS = {
    "sovra-overview": ("Sovra: instance overview", red('rpc_system="grpc"', "All services") + [
        ("Funnel: links created by kind", "sum by (kind) (increase(sovra_links_created_total[1h]))", "short"),
        ("Funnel: links redeemed by kind", "sum by (kind) (increase(sovra_links_redeemed_total[1h]))", "short"),
        ("Funnel: redeemed / created",
         "sum(increase(sovra_links_redeemed_total[1h])) / sum(increase(sovra_links_created_total[1h]))",
         "percentunit"),
        ("Grant outbox: oldest undelivered change", "max(sovra_grant_outbox_oldest_age_seconds)", "s"),
    ] + POOL),
    "sovra-identity": ("Sovra: identity", red(svc("identity"), "identity") + POOL),
    "sovra-relationships": ("Sovra: relationships", red(svc("relationships"), "relationships") + [
        ("Delegated administration accepted and removed",
         "sum by (change) (increase(sovra_delegated_admin_changes_total[1h]))", "short"),
        ("Grant outbox depth", "max(sovra_grant_outbox_depth)", "short"),
        ("Grant outbox lag (oldest undelivered change)", "max(sovra_grant_outbox_oldest_age_seconds)", "s"),
    ] + POOL),
    "sovra-commerce": ("Sovra: commerce", red(svc("commerce"), "commerce") + [
        ("Links created by kind", "sum by (kind) (increase(sovra_links_created_total[1h]))", "short"),
        ("Links redeemed by kind", "sum by (kind) (increase(sovra_links_redeemed_total[1h]))", "short"),
        ("Product-key redemptions by outcome",
         "sum by (outcome) (increase(sovra_product_key_redemptions_total[1h]))", "short"),
        ("Notifications delivered", "sum by (via) (increase(sovra_notifications_delivered_total[1h]))", "short"),
    ] + POOL),
}


def dashboard(uid, title, panels):
    out = []
    for i, (name, expr, unit) in enumerate(panels):
        out.append({
            "id": i + 1,
            "type": "timeseries",
            "title": name,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": "A", "expr": expr, "legendFormat": "__auto"}],
        })
    return {
        "uid": uid,
        "title": title,
        "tags": ["sovra"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus", "current": {},
        }]},
        "panels": out,
    }


if __name__ == "__main__":
    for uid, (title, panels) in DASHBOARDS.items():
        path = HERE / f"{uid}.json"
        path.write_text(json.dumps(dashboard(uid, title, panels), indent=2) + "\n")
        print(f"wrote {path.name}: {len(panels)} panels")
