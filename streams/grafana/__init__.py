"""Grafana I/O: dashboards pushed, decisions and commands posted as annotations.

==================  ====================================================================================================
``commands``        ``rollguard dashboards push`` and ``rollguard annotate``
``api``             Grafana's HTTP API through grafana-client, errors an operator can act on
``dashboard_push``  the idempotent upload of the committed dashboard JSON files
``annotations``     pure: which decision or command becomes which annotation
``annotator``       the consumer: decisions and commands topics to annotations, at least once
==================  ====================================================================================================
"""
