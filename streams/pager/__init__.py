"""The pager: rollguard's pages topic delivered to Alertmanager, PagerDuty Events v2 or a webhook, at least once.

=================  =======================================================================================
``pages``          the page model, validated once (:func:`parse_page`)
``receivers``      pure: the request body each receiver gets for a page
``delivery``       the HTTP shell: one POST, its answer classified retryable or not (:class:`Deliverer`)
``service``        the consumer: commit after delivery, backoff, counters (:class:`Pager`), standalone or in a worker
``metrics``        ``rollguard_pager_*``
``exceptions``     :class:`InvalidPage`, :class:`DeliveryError`
=================  =======================================================================================
"""

from streams.pager.delivery import Deliverer, pager_problems
from streams.pager.exceptions import DeliveryError, InvalidPage
from streams.pager.metrics import PagerMetrics
from streams.pager.pages import Page, parse_page
from streams.pager.receivers import alertmanager_alert, pagerduty_event, webhook_body
from streams.pager.service import Pager, PagerStats, serve, supervise

__all__ = ["Deliverer", "DeliveryError", "InvalidPage", "Page", "Pager", "PagerMetrics", "PagerStats",
           "alertmanager_alert", "pagerduty_event", "pager_problems", "parse_page", "serve", "supervise",
           "webhook_body"]  # fmt: skip
