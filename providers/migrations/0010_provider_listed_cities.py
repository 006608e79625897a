"""Provider.listed_cities: the cities as listed, before the aliases (SPEC §2a).

``cities`` stays what the engine and the per-city pool rows read (canonical names); it is now
derived from ``listed_cities`` through the aliases, so that removing or changing an alias can
give each provider back the names it listed. Existing providers start with what they serve now:
an alias added before this migration has already replaced the names it merged.
"""

import django.contrib.postgres.fields
from django.db import migrations, models

FORWARD = """
ALTER TABLE providers_provider ALTER COLUMN listed_cities SET DEFAULT '{}';
UPDATE providers_provider SET listed_cities = cities WHERE cardinality(cities) > 0;
"""


class Migration(migrations.Migration):
    dependencies = [("providers", "0009_provider_routing_limits")]

    operations = [
        migrations.AddField(
            model_name="provider",
            name="listed_cities",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.CharField(max_length=120),
                blank=True,
                default=list,
                editable=False,
                help_text="The cities as listed (normalised, before the aliases); empty: everywhere.",
                size=None,
            ),
        ),
        migrations.RunSQL(FORWARD, migrations.RunSQL.noop),
    ]
