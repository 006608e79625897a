"""Credits of approved returns kept per cycle on the provider (SPEC §9), so that a quota edited
later in the cycle keeps them.

Until now a credit only raised ``remaining_quota``, and no quota edit happened after it without
dropping it (the edit recomputed the quota left from the allocations alone). So each provider's
credits this cycle are what its quota left holds beyond what its quota and its leads this cycle
give: ``remaining_quota - (quota - leads_this_cycle)``, when positive. The backfill reads only
the provider's own row.
"""

from django.db import migrations, models

BACKFILL = """
UPDATE providers_provider
   SET credits_this_cycle = GREATEST(remaining_quota - quota + leads_this_cycle, 0)
 WHERE remaining_quota - quota + leads_this_cycle > 0;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("providers", "0007_membership_everywhere"),
    ]

    operations = [
        migrations.AddField(
            model_name="provider",
            name="credits_this_cycle",
            field=models.PositiveIntegerField(db_default=0, default=0, editable=False),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
    ]
