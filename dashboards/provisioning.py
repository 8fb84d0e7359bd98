"""What ``deploy/`` provisions, as constants the generated dashboards and the tests agree on.

``deploy/grafana/provisioning/datasources/prometheus.yaml`` creates the Prometheus datasource with
:data:`PROMETHEUS_UID`; every dashboard's ``datasource`` variable defaults to it. The dashboard provider in
``deploy/grafana/provisioning/dashboards/rollguard.yaml`` loads the JSON files of this package's folder, mounted
at :data:`DASHBOARDS_MOUNT`, into the Grafana folder :data:`GRAFANA_FOLDER`.
"""

from __future__ import annotations

__all__ = [
    "PROMETHEUS_UID",
    "GRAFANA_FOLDER",
    "GRAFANA_FOLDER_UID",
    "DASHBOARDS_MOUNT",
    "METRICS_PORT",
    "METRICS_PATH",
    "SCRAPE_JOB",
]

PROMETHEUS_UID = "rollguard-prometheus"
GRAFANA_FOLDER = "rollguard"
# The uid `rollguard dashboards push` gives the folder of that title (streams.grafana.dashboard_push.folder_uid), so a
# Grafana that was provisioned and is later pushed to keeps one "rollguard" folder.
GRAFANA_FOLDER_UID = "rollguard-52b60bb0"
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards/rollguard"
# Where a worker serves its metrics, and the Prometheus job that scrapes them.
METRICS_PORT = 9464
METRICS_PATH = "/metrics"
SCRAPE_JOB = "rollguard"
