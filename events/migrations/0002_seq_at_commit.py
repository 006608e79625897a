"""Give each event its stream position (seq) when its transaction commits, in commit order.

A deferred constraint trigger runs at commit time. It takes one transaction-level advisory
lock, which PostgreSQL releases only after the commit is visible to others, and then draws
the next seq. So commits that carry events pass this point one at a time, and seq order is the
order in which they became visible: a reader resuming after seq N can never find a smaller
seq appearing later. The lock is held only for the commit itself (no client round trip), and
a transaction holding it waits for nothing else, so it cannot deadlock.
"""

from django.db import migrations

# pg_advisory_xact_lock key: the ASCII bytes of "leaddist" as a bigint.
FORWARD = """
CREATE SEQUENCE events_event_seq AS bigint;

CREATE FUNCTION events_event_assign_seq() RETURNS trigger AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7810756212553249652);
    UPDATE events_event SET seq = nextval('events_event_seq') WHERE id = NEW.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER events_event_seq_at_commit
AFTER INSERT ON events_event
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION events_event_assign_seq();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS events_event_seq_at_commit ON events_event;
DROP FUNCTION IF EXISTS events_event_assign_seq();
DROP SEQUENCE IF EXISTS events_event_seq;
"""


class Migration(migrations.Migration):
    dependencies = [("events", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
