"""Routing rules (SPEC §2a): provider fields, city aliases, and the per-city pool walk.

- The provider's new columns get database defaults too, so rows inserted in SQL (the benchmarks)
  have no rules.
- Eligibility now also needs ``routing_open`` (the time rules as last materialised): both
  eligibility triggers of 0002/0005 are redefined with it.
- ``providers_poolcity`` holds one row per pool membership and city its provider serves ('' for
  everywhere), with the membership's eligibility flag. Triggers alone write it: a membership
  inserted, changed or removed rebuilds its rows; a provider's cities changed rebuild its
  memberships' rows; an eligibility flip of a membership is copied to its rows. They run in the
  transaction that holds the provider (its lock, or the membership trigger's FOR SHARE), so the
  rows change only under the locks the engine relies on.
- The version triggers of 0004 count the routing columns as catalogue edits too.
"""

import django.contrib.postgres.fields
import django.db.models.deletion
from django.db import migrations, models


DEFAULTS = """
ALTER TABLE providers_provider
    ALTER COLUMN cities SET DEFAULT '{}',
    ALTER COLUMN timezone SET DEFAULT '',
    ALTER COLUMN hours SET DEFAULT '',
    ALTER COLUMN time_off SET DEFAULT '[]'::jsonb,
    ALTER COLUMN cap_day_count SET DEFAULT 0,
    ALTER COLUMN cap_week_count SET DEFAULT 0,
    ALTER COLUMN routing_open SET DEFAULT true,
    ALTER COLUMN routing_reason SET DEFAULT '';
ALTER TABLE providers_poolcity ALTER COLUMN provider_eligible SET DEFAULT true;
"""

ELIGIBILITY = """
CREATE OR REPLACE FUNCTION providers_provider_sync_eligible() RETURNS trigger AS $$
BEGIN
    UPDATE providers_membership
       SET provider_eligible = (NEW.status = 'active' AND NEW.remaining_quota > 0
                                AND NEW.routing_open)
     WHERE provider_id = NEW.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER providers_provider_eligibility ON providers_provider;
CREATE TRIGGER providers_provider_eligibility
AFTER UPDATE OF status, remaining_quota, routing_open ON providers_provider
FOR EACH ROW
WHEN ((OLD.status = 'active' AND OLD.remaining_quota > 0 AND OLD.routing_open)
      IS DISTINCT FROM (NEW.status = 'active' AND NEW.remaining_quota > 0 AND NEW.routing_open))
EXECUTE FUNCTION providers_provider_sync_eligible();

CREATE OR REPLACE FUNCTION providers_membership_set_eligible() RETURNS trigger AS $$
BEGIN
    SELECT (p.status = 'active' AND p.remaining_quota > 0 AND p.routing_open)
      INTO NEW.provider_eligible
      FROM providers_provider p
     WHERE p.id = NEW.provider_id
       FOR SHARE;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
"""

ELIGIBILITY_BACK = """
CREATE OR REPLACE FUNCTION providers_provider_sync_eligible() RETURNS trigger AS $$
BEGIN
    UPDATE providers_membership
       SET provider_eligible = (NEW.status = 'active' AND NEW.remaining_quota > 0)
     WHERE provider_id = NEW.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER providers_provider_eligibility ON providers_provider;
CREATE TRIGGER providers_provider_eligibility
AFTER UPDATE OF status, remaining_quota ON providers_provider
FOR EACH ROW
WHEN ((OLD.status = 'active' AND OLD.remaining_quota > 0)
      IS DISTINCT FROM (NEW.status = 'active' AND NEW.remaining_quota > 0))
EXECUTE FUNCTION providers_provider_sync_eligible();

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

POOL_CITIES = """
CREATE FUNCTION providers_membership_sync_cities() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND ROW(OLD.service_id, OLD.provider_id, OLD.role, OLD.position)
           IS NOT DISTINCT FROM ROW(NEW.service_id, NEW.provider_id, NEW.role, NEW.position) THEN
        IF OLD.provider_eligible IS DISTINCT FROM NEW.provider_eligible THEN
            UPDATE providers_poolcity SET provider_eligible = NEW.provider_eligible
             WHERE membership_id = NEW.id;
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM providers_poolcity WHERE membership_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.role = 'pool' THEN
        INSERT INTO providers_poolcity
               (membership_id, service_id, provider_id, position, city, provider_eligible)
        SELECT NEW.id, NEW.service_id, NEW.provider_id, NEW.position, c.city,
               NEW.provider_eligible
          FROM providers_provider p
         CROSS JOIN LATERAL unnest(CASE WHEN cardinality(p.cities) = 0 THEN ARRAY['']::varchar[]
                                        ELSE p.cities END) AS c(city)
         WHERE p.id = NEW.provider_id;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER providers_membership_cities
AFTER INSERT OR DELETE OR UPDATE ON providers_membership
FOR EACH ROW EXECUTE FUNCTION providers_membership_sync_cities();

CREATE FUNCTION providers_provider_sync_cities() RETURNS trigger AS $$
BEGIN
    DELETE FROM providers_poolcity WHERE provider_id = NEW.id;
    INSERT INTO providers_poolcity
           (membership_id, service_id, provider_id, position, city, provider_eligible)
    SELECT m.id, m.service_id, m.provider_id, m.position, c.city, m.provider_eligible
      FROM providers_membership m
     CROSS JOIN LATERAL unnest(CASE WHEN cardinality(NEW.cities) = 0 THEN ARRAY['']::varchar[]
                                    ELSE NEW.cities END) AS c(city)
     WHERE m.provider_id = NEW.id AND m.role = 'pool';
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER providers_provider_cities
AFTER UPDATE OF cities ON providers_provider
FOR EACH ROW WHEN (OLD.cities IS DISTINCT FROM NEW.cities)
EXECUTE FUNCTION providers_provider_sync_cities();

INSERT INTO providers_poolcity
       (membership_id, service_id, provider_id, position, city, provider_eligible)
SELECT m.id, m.service_id, m.provider_id, m.position, '', m.provider_eligible
  FROM providers_membership m WHERE m.role = 'pool';
"""

POOL_CITIES_BACK = """
DROP TRIGGER IF EXISTS providers_provider_cities ON providers_provider;
DROP FUNCTION IF EXISTS providers_provider_sync_cities();
DROP TRIGGER IF EXISTS providers_membership_cities ON providers_membership;
DROP FUNCTION IF EXISTS providers_membership_sync_cities();
"""

OLD_VERSIONED = ["name", "quota", "status"]
VERSIONED = [*OLD_VERSIONED, "cities", "timezone", "hours", "time_off", "daily_cap", "weekly_cap"]


def _versions(columns: list[str]) -> str:
    old = ", ".join(f"OLD.{c}" for c in columns)
    new = ", ".join(f"NEW.{c}" for c in columns)
    return f"""
DROP TRIGGER IF EXISTS providers_provider_version_bump ON providers_provider;
DROP TRIGGER IF EXISTS providers_provider_version_keep ON providers_provider;
CREATE TRIGGER providers_provider_version_bump
BEFORE UPDATE OF {", ".join(columns)}, version ON providers_provider
FOR EACH ROW WHEN ((ROW({old}) IS DISTINCT FROM ROW({new})))
EXECUTE FUNCTION providers_version_bump();
CREATE TRIGGER providers_provider_version_keep
BEFORE UPDATE OF version ON providers_provider
FOR EACH ROW WHEN ((ROW({old}) IS NOT DISTINCT FROM ROW({new}))
                   AND NEW.version IS DISTINCT FROM OLD.version)
EXECUTE FUNCTION providers_version_keep();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0005_membership_trigger_locks_provider'),
    ]

    operations = [
        migrations.CreateModel(
            name='CityAlias',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('alias', models.CharField(max_length=120, unique=True)),
                ('city', models.CharField(help_text='The canonical name, normalised.', max_length=120)),
            ],
            options={
                'verbose_name_plural': 'city aliases',
                'ordering': ['city', 'alias'],
            },
        ),
        migrations.CreateModel(
            name='PoolCity',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('position', models.PositiveIntegerField()),
                ('city', models.CharField(blank=True, max_length=120)),
                ('provider_eligible', models.BooleanField(default=True)),
            ],
        ),
        migrations.AddField(
            model_name='provider',
            name='cap_day',
            field=models.DateField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='provider',
            name='cap_day_count',
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name='provider',
            name='cap_week',
            field=models.DateField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='provider',
            name='cap_week_count',
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name='provider',
            name='cities',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=120), blank=True, default=list, help_text='Canonical cities served (normalised, aliases resolved); empty: everywhere.', size=None),
        ),
        migrations.AddField(
            model_name='provider',
            name='daily_cap',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='provider',
            name='hours',
            field=models.CharField(blank=True, default='', help_text='Weekly hours, e.g. “mon-fri 08:00-18:00; sat 09:00-13:00”; blank: always.', max_length=500),
        ),
        migrations.AddField(
            model_name='provider',
            name='routing_changes_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='provider',
            name='routing_open',
            field=models.BooleanField(default=True, editable=False),
        ),
        migrations.AddField(
            model_name='provider',
            name='routing_reason',
            field=models.CharField(blank=True, default='', editable=False, max_length=16),
        ),
        migrations.AddField(
            model_name='provider',
            name='time_off',
            field=models.JSONField(blank=True, default=list, help_text='Inclusive local date ranges: [[first, last], ...].'),
        ),
        migrations.AddField(
            model_name='provider',
            name='timezone',
            field=models.CharField(blank=True, default='', help_text="IANA name; blank: the site's TIME_ZONE.", max_length=64),
        ),
        migrations.AddField(
            model_name='provider',
            name='weekly_cap',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name='provider',
            index=models.Index(condition=models.Q(('routing_changes_at__isnull', False)), fields=['routing_changes_at'], name='provider_routing_due'),
        ),
        migrations.AddConstraint(
            model_name='cityalias',
            constraint=models.CheckConstraint(condition=models.Q(('alias', models.F('city')), _negated=True), name='providers_cityalias_not_itself'),
        ),
        migrations.AddField(
            model_name='poolcity',
            name='membership',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='providers.membership'),
        ),
        migrations.AddField(
            model_name='poolcity',
            name='provider',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='providers.provider'),
        ),
        migrations.AddField(
            model_name='poolcity',
            name='service',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='providers.service'),
        ),
        migrations.AddIndex(
            model_name='poolcity',
            index=models.Index(condition=models.Q(('provider_eligible', True)), fields=['service', 'city', 'position'], name='poolcity_eligible_walk'),
        ),
        migrations.AddConstraint(
            model_name='poolcity',
            constraint=models.UniqueConstraint(fields=('membership', 'city'), name='providers_poolcity_unique_city'),
        ),
        migrations.RunSQL(DEFAULTS, migrations.RunSQL.noop),
        migrations.RunSQL(ELIGIBILITY, ELIGIBILITY_BACK),
        migrations.RunSQL(POOL_CITIES, POOL_CITIES_BACK),
        migrations.RunSQL(_versions(VERSIONED), _versions(OLD_VERSIONED)),
    ]
