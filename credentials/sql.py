"""Every statement credentials runs by hand, and nothing else (STYLE: SQL on a measured hot
path). The table name comes from the model; it names no other app's table."""

from __future__ import annotations

from credentials.models import ApiKey

API_KEY = ApiKey._meta.db_table

# Every API request looks its key up: hand-written, so it skips the ORM's query compiler.
# The columns are in the model's field order, as Model.from_db takes them.
USABLE_KEY_FIELDS = ("id", "name", "key_prefix", "key_hash", "last_used_at", "rate_limit")
USABLE_KEY_SQL = (
    f"SELECT {', '.join(USABLE_KEY_FIELDS)} FROM {API_KEY}"
    " WHERE key_hash = %s AND revoked_at IS NULL"
)
