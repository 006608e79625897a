"""Version columns for optimistic concurrency in the admin, kept by PostgreSQL.

A version counts *catalogue edits*: the columns an operator edits (provider: name, quota,
status; service: slug, name, active; membership: service, provider, role, position). A trigger
adds 1 when one of them changes, whoever writes the row (a service, a list action, a bulk
update, raw SQL), and another puts the old value back if a write sets the version itself (a
Django save() of a stale instance would otherwise move it backwards). Writes of other columns
(the engine taking quota, a quota reset, the eligibility mirror) do not fire them at all:
``UPDATE OF`` lists only these columns, so the engine's hot path pays nothing.
"""

from django.db import migrations, models

TABLES = {
    "providers_provider": ["name", "quota", "status"],
    "providers_service": ["slug", "name", "active"],
    "providers_membership": ["service_id", "provider_id", "role", "position"],
}

FUNCTIONS = """
CREATE FUNCTION providers_version_bump() RETURNS trigger AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION providers_version_keep() RETURNS trigger AS $$
BEGIN
    NEW.version := OLD.version;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
"""


def _triggers(table: str, columns: list[str]) -> str:
    old = ", ".join(f"OLD.{c}" for c in columns)
    new = ", ".join(f"NEW.{c}" for c in columns)
    # The two WHEN conditions exclude each other, so their order does not matter.
    return f"""
CREATE TRIGGER {table}_version_bump
BEFORE UPDATE OF {", ".join(columns)}, version ON {table}
FOR EACH ROW WHEN ((ROW({old}) IS DISTINCT FROM ROW({new})))
EXECUTE FUNCTION providers_version_bump();

CREATE TRIGGER {table}_version_keep
BEFORE UPDATE OF version ON {table}
FOR EACH ROW WHEN ((ROW({old}) IS NOT DISTINCT FROM ROW({new}))
                   AND NEW.version IS DISTINCT FROM OLD.version)
EXECUTE FUNCTION providers_version_keep();
"""


FORWARD = FUNCTIONS + "".join(_triggers(t, c) for t, c in TABLES.items())

BACKWARD = "".join(
    f"DROP TRIGGER IF EXISTS {t}_version_bump ON {t};\nDROP TRIGGER IF EXISTS {t}_version_keep ON {t};\n"
    for t in TABLES
) + """
DROP FUNCTION IF EXISTS providers_version_bump();
DROP FUNCTION IF EXISTS providers_version_keep();
"""


class Migration(migrations.Migration):
    dependencies = [("providers", "0003_membership_ineligible_walk")]

    operations = [
        migrations.AddField(
            model_name="membership",
            name="version",
            field=models.PositiveBigIntegerField(db_default=1, default=1, editable=False),
        ),
        migrations.AddField(
            model_name="provider",
            name="version",
            field=models.PositiveBigIntegerField(db_default=1, default=1, editable=False),
        ),
        migrations.AddField(
            model_name="service",
            name="version",
            field=models.PositiveBigIntegerField(db_default=1, default=1, editable=False),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
