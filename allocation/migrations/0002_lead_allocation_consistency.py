"""No lead half-allocated, enforced by PostgreSQL at commit.

Deferred constraint triggers check, when the transaction commits, that an allocated lead has
exactly 3 allocations and a waiting lead has none. A bug that wrote two allocations, or marked
a lead allocated without its rows, fails the commit instead of corrupting the data.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION allocation_lead_check_allocations(lead_id bigint) RETURNS void AS $$
DECLARE
    lead_status text;
    n integer;
BEGIN
    SELECT status INTO lead_status FROM allocation_lead WHERE id = lead_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT count(*) INTO n FROM allocation_allocation WHERE allocation_allocation.lead_id = $1;
    IF lead_status = 'allocated' AND n <> 3 THEN
        RAISE EXCEPTION 'lead % is allocated with % allocations, not 3', lead_id, n
            USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_lead_three_providers';
    ELSIF lead_status = 'waiting' AND n <> 0 THEN
        RAISE EXCEPTION 'lead % is waiting with % allocations', lead_id, n
            USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_lead_three_providers';
    END IF;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION allocation_lead_trigger_check() RETURNS trigger AS $$
BEGIN
    PERFORM allocation_lead_check_allocations(NEW.id);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION allocation_allocation_trigger_check() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM allocation_lead_check_allocations(OLD.lead_id);
    ELSE
        PERFORM allocation_lead_check_allocations(NEW.lead_id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER allocation_lead_three_providers
AFTER INSERT OR UPDATE OF status ON allocation_lead
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION allocation_lead_trigger_check();

CREATE CONSTRAINT TRIGGER allocation_allocation_three_providers
AFTER INSERT OR UPDATE OR DELETE ON allocation_allocation
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION allocation_allocation_trigger_check();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS allocation_allocation_three_providers ON allocation_allocation;
DROP TRIGGER IF EXISTS allocation_lead_three_providers ON allocation_lead;
DROP FUNCTION IF EXISTS allocation_allocation_trigger_check();
DROP FUNCTION IF EXISTS allocation_lead_trigger_check();
DROP FUNCTION IF EXISTS allocation_lead_check_allocations(bigint);
"""


class Migration(migrations.Migration):
    dependencies = [("allocation", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
