"""Offline replay and reporting: the same engine over files or historical topics, and what a rule author reads.

======================  ================================================================================================
``replay``              ``rollguard replay``: JSONL files (or ``kafka_source``) through one or two rule sets
``kafka_source``        historical Kafka topics as a replay input (``--from-kafka``), without touching live state
``report``              ``report.md``; ``comparison`` diffs two replays, ``report_format`` words numbers for people
``charts``              the PNGs to draw and the report's section; ``chart_series`` collects, ``chart_render`` draws
``scenario``            the seeded example traffic generator; ``scenario_incidents`` what can go wrong in it
``rule_tests``          ``rollguard rules test``: unit tests of rule packs
======================  ================================================================================================
"""
