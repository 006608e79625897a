"""Keep Membership.provider_eligible equal to "provider active and with quota", in PostgreSQL.

The engine walks pools through a partial index on eligible memberships. A trigger (not Python)
keeps the flag right, so no write path can forget it: raw SQL, bulk updates and the admin are
all covered. The provider trigger fires only when eligibility actually flips.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION providers_provider_sync_eligible() RETURNS trigger AS $$
BEGIN
    UPDATE providers_membership
       SET provider_eligible = (NEW.status = 'active' AND NEW.remaining_quota > 0)
     WHERE provider_id = NEW.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER providers_provider_eligibility
AFTER UPDATE OF status, remaining_quota ON providers_provider
FOR EACH ROW
WHEN ((OLD.status = 'active' AND OLD.remaining_quota > 0)
      IS DISTINCT FROM (NEW.status = 'active' AND NEW.remaining_quota > 0))
EXECUTE FUNCTION providers_provider_sync_eligible();

CREATE FUNCTION providers_membership_set_eligible() RETURNS trigger AS $$
BEGIN
    SELECT (p.status = 'active' AND p.remaining_quota > 0)
      INTO NEW.provider_eligible
      FROM providers_provider p
     WHERE p.id = NEW.provider_id;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER providers_membership_eligibility
BEFORE INSERT OR UPDATE ON providers_membership
FOR EACH ROW
EXECUTE FUNCTION providers_membership_set_eligible();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS providers_membership_eligibility ON providers_membership;
DROP FUNCTION IF EXISTS providers_membership_set_eligible();
DROP TRIGGER IF EXISTS providers_provider_eligibility ON providers_provider;
DROP FUNCTION IF EXISTS providers_provider_sync_eligible();
"""


class Migration(migrations.Migration):
    dependencies = [("providers", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
