"""Every statement providers runs by hand, and nothing else (STYLE: hand-written SQL in one
module per app). Table names come from the models; it names no other app's table."""

from __future__ import annotations

from providers.models import Provider, Service

# The seed gives services and providers explicit ids, which leaves their sequences behind: one
# statement per table moves its sequence past its rows (seed_catalogue).
SEQUENCES_PAST_SEEDED_ROWS = tuple(
    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
    f"GREATEST((SELECT MAX(id) FROM {table}), 1))"
    for table in (Service._meta.db_table, Provider._meta.db_table)
)
