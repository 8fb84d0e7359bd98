"""Grafana dashboards as code: generated from the rule packs, committed as JSON next to this package."""
