"""The API keys of lead sources. The table is still allocation_apikey: the model moved
from the allocation app in Django's state only."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from leaddist.http.ratelimit import RATE_PATTERN, Rate, parse_rate


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def usable(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A lead source's credential. Only the SHA-256 of the key is stored."""

    PREFIX = "ld_"

    name = models.CharField(max_length=120)
    key_prefix = models.CharField(max_length=16, editable=False, help_text="To recognise a key.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    rate_limit = models.CharField(
        max_length=16,
        blank=True,
        validators=[RegexValidator(f"^(?:{RATE_PATTERN})$", "Use a form like 1000/s, 600/m or 0.")],
        help_text="Lead submissions allowed per window, e.g. 1000/s, 600/m or 20000/h; 0 for "
        "no limit. Blank: the default, RATE_LIMIT_PER_KEY.",
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        db_table = "allocation_apikey"
        ordering = ["-pk"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def rate(self) -> Rate | None:
        """This key's intake limit: its own, or the default; None means unlimited."""
        return parse_rate(self.rate_limit or settings.RATE_LIMIT_PER_KEY)

    @staticmethod
    def hash_key(raw: str) -> str:
        # Keys are 32 random bytes, so a fast hash is enough: there is nothing to brute-force.
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def generate(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)
