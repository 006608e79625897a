"""Endpoint secrets encrypted at rest: a wider column, then every clear secret encrypted with
the first of DELIVERY_SECRET_KEYS (delivery/encryption.py). Reversed, they are decrypted and
the column narrowed again."""

from django.db import migrations, models

from delivery.encryption import decrypt_secret, encrypt_secret, is_encrypted


def encrypt_clear_secrets(apps, schema_editor):
    Endpoint = apps.get_model("delivery", "Endpoint")
    for endpoint in Endpoint.objects.exclude(secret="").only("secret"):
        if not is_encrypted(endpoint.secret):
            endpoint.secret = encrypt_secret(endpoint.secret)
            endpoint.save(update_fields=["secret"])


def decrypt_secrets(apps, schema_editor):
    Endpoint = apps.get_model("delivery", "Endpoint")
    for endpoint in Endpoint.objects.exclude(secret="").only("secret"):
        if is_encrypted(endpoint.secret):
            endpoint.secret = decrypt_secret(endpoint.secret)
            endpoint.save(update_fields=["secret"])


class Migration(migrations.Migration):

    dependencies = [
        ("delivery", "0002_drop_redundant_fk_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="endpoint",
            name="secret",
            field=models.CharField(blank=True, editable=False, max_length=255),
        ),
        migrations.RunPython(encrypt_clear_secrets, decrypt_secrets),
    ]
