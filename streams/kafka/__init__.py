"""Kafka plumbing shared by the live worker and the consumers that deliver its outputs elsewhere (pager, annotate).

=======================  ===============================================================================================
``topics``               topic names and their creation
``committing_consumer``  an at-least-once consumer: an offset is committed only after its handler returned
``backoff``              exponential backoff (with optional jitter) for delivery retries
=======================  ===============================================================================================
"""
