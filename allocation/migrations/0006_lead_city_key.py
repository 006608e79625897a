"""Each lead's canonical city (SPEC §2a), and the waiting queue per (service, city).

Waiting leads get their key here (normalised; no aliases exist yet), so that the queue they
wait in is their city's; other leads keep '' (their key is only shown).
"""

from django.db import migrations, models


def key_waiting_leads(apps, schema_editor):
    from providers.routing import normalise_city

    Lead = apps.get_model("allocation", "Lead")
    for lead in Lead.objects.filter(status="waiting").only("pk", "city").iterator():
        Lead.objects.filter(pk=lead.pk).update(city_key=normalise_city(lead.city))


class Migration(migrations.Migration):

    dependencies = [
        ('allocation', '0005_move_apikey_to_credentials'),
        ('providers', '0006_routing'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='lead',
            name='lead_waiting_queue',
        ),
        migrations.AddField(
            model_name='lead',
            name='city_key',
            field=models.CharField(blank=True, db_default='', default='', max_length=120),
        ),
        migrations.RunPython(key_waiting_leads, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name='lead',
            index=models.Index(condition=models.Q(('status', 'waiting')), fields=['service', 'city_key', 'id'], name='lead_waiting_queue'),
        ),
    ]
