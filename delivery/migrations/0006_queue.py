"""delivery_delivery becomes the delivery queue (docs/DELIVERY.md, "The queue").

- ``worker_id`` marks a delivery in flight (claimed by a DeliveryWorker); DeliveryWorker rows
  are the workers' heartbeats. ProviderSlot goes: each provider's attempts in flight are now
  counted from the claims themselves.
- Delivery's trigger on the engine's allocation rows inserts each allocated lead's deliveries,
  one per picked provider and channel of its endpoint, in the allocating statement itself: they
  commit or roll back with the lead, cost the engine no round trip, and the engine names no
  delivery table. Written out here, as migrations are history; the table names are the models'.
"""

from django.db import migrations, models

ENQUEUE = """
CREATE FUNCTION delivery_enqueue_allocations() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_delivery (lead_id, provider_id, channel, role, rank, status, attempts,
                                   generation, last_error, next_attempt_at, created_at,
                                   updated_at)
    SELECT allocation.lead_id, allocation.provider_id, target.channel, allocation.role,
           allocation.rank, 'pending', 0, 0, '', allocation.created_at, allocation.created_at,
           allocation.created_at
      FROM new_allocations AS allocation
      JOIN delivery_endpoint AS endpoint ON endpoint.provider_id = allocation.provider_id
     CROSS JOIN LATERAL (VALUES ('webhook', endpoint.url), ('email', endpoint.email))
           AS target(channel, address)
     WHERE target.address <> ''
     ORDER BY allocation.lead_id, allocation.rank, target.channel DESC;
    RETURN NULL;
END
$$;
CREATE TRIGGER delivery_enqueue_allocations
    AFTER INSERT ON allocation_allocation
    REFERENCING NEW TABLE AS new_allocations
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_enqueue_allocations();
"""
DROP_ENQUEUE = """
DROP TRIGGER IF EXISTS delivery_enqueue_allocations ON allocation_allocation;
DROP FUNCTION IF EXISTS delivery_enqueue_allocations();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("allocation", "0005_move_apikey_to_credentials"),
        ("delivery", "0005_deliveries_queue_without_notify"),
        ("providers", "0005_membership_trigger_locks_provider"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryWorker",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hostname", models.CharField(max_length=255)),
                ("pid", models.PositiveIntegerField()),
                ("started_at", models.DateTimeField()),
                ("beat_at", models.DateTimeField()),
            ],
        ),
        migrations.RemoveField(
            model_name="providerslot",
            name="provider",
        ),
        migrations.AddField(
            model_name="delivery",
            name="worker_id",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("worker_id__isnull", False)),
                fields=["provider", "next_attempt_at"],
                name="delivery_in_flight",
            ),
        ),
        migrations.AddField(
            model_name="delivery",
            name="held_back",
            field=models.BooleanField(db_default=False, default=False, editable=False),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("held_back", True)),
                fields=["provider", "next_attempt_at"],
                name="delivery_held_back",
            ),
        ),
        migrations.AddIndex(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("delivered_at__isnull", False)),
                fields=["delivered_at"],
                name="delivery_delivered_recent",
            ),
        ),
        migrations.DeleteModel(
            name="ProviderSlot",
        ),
        migrations.RunSQL(ENQUEUE, DROP_ENQUEUE),
    ]
