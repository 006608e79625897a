"""What the catalogue's commands and other apps' commands about one provider share."""

from __future__ import annotations

from django.core.management.base import CommandError

from providers.models import Provider


def provider_named(provider_id: int) -> Provider:
    """The provider a command's PROVIDER_ID names, or the command's error saying there is none."""
    provider = Provider.objects.filter(pk=provider_id).first()
    if provider is None:
        raise CommandError(f"No provider with id {provider_id}.")
    return provider
