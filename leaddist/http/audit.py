"""Structured log lines: one per lead submission and one per webhook delivery.

Each line is a JSON object on the ``leaddist.audit`` logger: who, what, the outcome and the
duration. Phone numbers and client addresses appear only as a keyed hash (HMAC-SHA256):
a plain hash of a 7-15 digit number is reversed by trying them all, a keyed one is not
without the key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import time
from typing import Any

from django.conf import settings

logger = logging.getLogger("leaddist.audit")

HASH_HEX_CHARS = 16  # 64 bits: enough to correlate lines, too short to be worth storing


@functools.cache
def _hash_key(secret_key: str, phone_hash_key: str) -> bytes:
    if phone_hash_key:
        return phone_hash_key.encode()
    return hmac.new(secret_key.encode(), b"leaddist.phone-hash", hashlib.sha256).digest()


def keyed_hash(value: str) -> str:
    """HMAC-SHA256 of ``value`` under PHONE_HASH_KEY (or a key derived from SECRET_KEY)."""
    key = _hash_key(settings.SECRET_KEY, settings.PHONE_HASH_KEY)
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:HASH_HEX_CHARS]


def log_event(event: str, *, started: float, **fields: Any) -> None:
    """Log one JSON line ``{"event", **fields, "duration_ms"}``; None fields are left out.

    ``started`` is a ``time.monotonic()`` reading from when the work began. Pass a phone as
    ``phone`` or an address as ``client``: they are logged as ``phone_hash``/``client_hash``.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    line: dict[str, Any] = {"event": event}
    for name, value in fields.items():
        if value is None:
            continue
        if name in ("phone", "client"):
            line[f"{name}_hash"] = keyed_hash(str(value))
        else:
            line[name] = value
    line["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    logger.info(json.dumps(line, default=str, ensure_ascii=True))
