"""The live pipeline: Kafka in, the engine, outputs out, state in Redis.

==================  ====================================================================================================
``worker``          ``rollguard worker``: pre-flight checks (topics, Redis eviction policy), then the Faust worker loop
``app``             the Faust application: agents on the input topics, the control reader, idle and reload timers
``processor``       one batch: parse, engine step, publish, commit state with its offsets (exactly-once bookkeeping)
``store``           engine state in Redis / Redis Cluster, written atomically with the offsets it reflects
``status_summary``  what ``rollguard status`` shows for one feature
``observability``   the worker's Prometheus metrics; ``rule_series`` renders the per-rule series
``ops``             ``status``, ``resume``, ``rules reload`` against a running deployment
``embedded``        a local Kafka-protocol broker and Redis, for the demo, the tests and the benchmarks
==================  ====================================================================================================
"""
