"""Outgoing webhooks: a durable outbox in the database, signed deliveries.

``outbox.py`` writes events (inside the transaction of the change that caused
them, when there is one); ``dispatcher.py`` delivers them, claimed by one node
at a time, in order per key, with retries and a dead letter; ``signing.py`` is
the HMAC-SHA256 both directions share. The domain imports ``webhooks.outbox``
and ``webhooks.signing`` only; the dispatcher (an HTTP client) is wired by the
app. See docs/webhooks.md.
"""

from webhooks.outbox import WEBHOOK_VERSION, Outbox
from webhooks.signing import signature_header, signature_matches

__all__ = ["WEBHOOK_VERSION", "Outbox", "signature_header", "signature_matches"]
