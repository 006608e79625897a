"""Creating and revoking the API keys of lead sources."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from credentials.auth import verified_keys
from credentials.models import ApiKey


def create_api_key(*, name: str, rate_limit: str = "") -> tuple[ApiKey, str]:
    """Create a key for a lead source; return it with the raw key, which is never stored.

    ``rate_limit`` ("1000/s", "600/m", "0" for none) overrides RATE_LIMIT_PER_KEY for this key.
    """
    raw = ApiKey.generate()
    key = ApiKey(
        name=name,
        key_hash=ApiKey.hash_key(raw),
        key_prefix=raw[: len(ApiKey.PREFIX) + 6],
        rate_limit=rate_limit,
    )
    key.full_clean(exclude=["key_hash", "key_prefix"])
    key.save()
    return key, raw


def revoke_api_keys(keys: QuerySet[ApiKey]) -> int:
    """Revoke the keys not yet revoked; return how many. This process refuses them at once,
    the others within API_KEY_CACHE_SECONDS (credentials.auth.verified_keys)."""
    revoked = keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    verified_keys.clear()
    return revoked
