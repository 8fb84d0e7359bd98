"""The reference oracle: today's per-event engine, frozen on 2026-12-04 at commit 333decf.

``ReferenceEngine`` is a copy of ``rules.engine.Engine`` as it was before its ingest became batched (columnar)
and its windows incremental: events applied one at a time (``_add``, ``_update_detectors``) and every window merged
afresh from its buckets at every instant (``windows``, ``evaluation``). It lives only under ``tests/``; the product
(``rules``, ``streams``, ``detectors``, ``dashboards``) never imports it (``tests/test_architecture.py`` checks). It
is the oracle of ``tests/test_differential.py``: the product engine must give byte-identical outputs.

Do not "fix" or speed it up along with the product: change it only when the intended behaviour changes, in a commit
of its own that says why.
"""

from .engine import ReferenceEngine

__all__ = ["ReferenceEngine"]
