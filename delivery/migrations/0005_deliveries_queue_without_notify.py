"""Delivery jobs are inserted without procrastinate's NOTIFY; delivery workers poll instead.

procrastinate's trigger NOTIFYs every job inserted as todo. A transaction that NOTIFYs takes a
lock shared by the whole server while it commits, so such commits pass one at a time: for the
allocation statement, which defers a lead's delivery job with the providers' rows locked, that
made every lock wait longer (docs/PERFORMANCE.md, "Intake with delivery on"). Here the trigger
is made again with one more condition: not for the ``deliveries`` queue. Its delivery workers
ask for jobs every DELIVERY_POLL_SECONDS instead (leaddist/serve.py, the Makefile), and without
waiting at all while jobs are queued. Every other queue is notified as before.

If a later procrastinate release makes this trigger again, NOTIFY comes back for deliveries:
slower, not wrong. delivery/tests/test_enqueue.py checks the condition is in place.
"""

from django.db import migrations

# allocation.services.DELIVERY_JOB_QUEUE, as it was when this migration was written.
DELIVERY_JOB_QUEUE = "deliveries"

TRIGGER = """
DROP TRIGGER IF EXISTS procrastinate_jobs_notify_queue_job_inserted_v1 ON procrastinate_jobs;
CREATE TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1
    AFTER INSERT ON procrastinate_jobs
    FOR EACH ROW WHEN ({condition})
    EXECUTE PROCEDURE procrastinate_notify_queue_job_inserted_v1();
"""
PROCRASTINATE = "new.status = 'todo'::procrastinate_job_status"


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0004_providerslot"),
        ("procrastinate", "0041_post_retry_failed_job"),
    ]

    operations = [
        migrations.RunSQL(
            TRIGGER.format(condition=f"{PROCRASTINATE} AND new.queue_name <> '{DELIVERY_JOB_QUEUE}'"),
            TRIGGER.format(condition=PROCRASTINATE),
        )
    ]
