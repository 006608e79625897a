"""What staff allow a provider to set itself in the portal (SPEC §9): ``areas_locked`` and the
maximum caps. They are catalogue edits: the version triggers count them too, so a portal or
admin form opened before staff changed them is refused, not applied over them.
"""

import importlib

from django.db import migrations, models

routing = importlib.import_module("providers.migrations.0006_routing")

LIMITS = ["areas_locked", "max_daily_cap", "max_weekly_cap"]


class Migration(migrations.Migration):

    dependencies = [
        ("providers", "0008_provider_credits_this_cycle"),
    ]

    operations = [
        migrations.AddField(
            model_name="provider",
            name="areas_locked",
            field=models.BooleanField(db_default=False, default=False),
        ),
        migrations.AddField(
            model_name="provider",
            name="max_daily_cap",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="provider",
            name="max_weekly_cap",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.RunSQL(
            routing._versions([*routing.VERSIONED, *LIMITS]), routing._versions(routing.VERSIONED)
        ),
    ]
