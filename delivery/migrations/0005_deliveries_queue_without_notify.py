"""Once: delivery jobs inserted without procrastinate's NOTIFY. Now: nothing.

This migration used to recreate procrastinate's own insert trigger with one more condition, so
that jobs of the ``deliveries`` queue were inserted without NOTIFY. Deliveries no longer go
through procrastinate at all (migration 0006: ``delivery_delivery`` is their queue), and
delivery must not touch procrastinate's objects, so it does nothing any more. A database that
ran the old version keeps procrastinate's trigger with that extra condition, which is harmless:
no job is ever put on the ``deliveries`` queue now (docs/DELIVERY.md, "Upgrading").
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("delivery", "0004_providerslot")]

    operations: list = []
