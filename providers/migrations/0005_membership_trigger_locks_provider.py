"""The membership eligibility trigger reads its provider FOR SHARE.

Before, it read the provider with a plain SELECT. A membership inserted (or moved to another
provider) while a concurrent transaction resumed, paused or reset that provider could then
keep a stale flag for good:

    T1: UPDATE provider 7 SET status = 'active'   -- not committed; its AFTER trigger updated
                                                  -- the memberships it could see
    T2: INSERT membership (service 1, provider 7) -- reads provider 7 as committed: paused,
                                                  -- so provider_eligible = false
    T1 commits, T2 commits                        -- provider 7 active, the flag false

FOR SHARE conflicts with every row-writing lock. T2 now waits for T1 to commit and then reads
T1's row (READ COMMITTED re-reads a row it waited for). In the other order, T1's UPDATE waits
for T2's share lock, and its trigger's UPDATE of the memberships, a new statement with a new
snapshot, sees T2's committed row. Either way the flag ends right.

The share lock is why a membership save locks its providers first, in pk order
(providers.locks): taken inside the trigger, row by row, it would be taken out of order.
When the provider trigger itself updates memberships, its transaction already holds the
provider's row, and the share lock costs nothing.
"""

from django.db import migrations

LOCKED = """
CREATE OR REPLACE FUNCTION providers_membership_set_eligible() RETURNS trigger AS $$
BEGIN
    SELECT (p.status = 'active' AND p.remaining_quota > 0)
      INTO NEW.provider_eligible
      FROM providers_provider p
     WHERE p.id = NEW.provider_id
       FOR SHARE;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
"""

UNLOCKED = """
CREATE OR REPLACE FUNCTION providers_membership_set_eligible() RETURNS trigger AS $$
BEGIN
    SELECT (p.status = 'active' AND p.remaining_quota > 0)
      INTO NEW.provider_eligible
      FROM providers_provider p
     WHERE p.id = NEW.provider_id;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
"""


class Migration(migrations.Migration):
    dependencies = [("providers", "0004_catalogue_versions")]

    operations = [migrations.RunSQL(LOCKED, UNLOCKED)]
