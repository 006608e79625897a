"""Who may sign in to the provider portal (SPEC §9): a Django user tied to one provider."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from providers.models import Provider


class ProviderUserQuerySet(models.QuerySet["ProviderUser"]):
    def usable(self) -> ProviderUserQuerySet:
        """Accounts that may sign in: active, never staff (portal/services.py refuses staff)."""
        return self.filter(user__is_active=True, user__is_staff=False, user__is_superuser=False)


class ProviderUser(models.Model):
    """A provider's account. A provider has any number; a user belongs to at most one.

    The user is never staff: a staff account reaching the portal would see one provider's view
    of data it can see whole elsewhere, and a provider account promoted to staff would keep its
    portal access next to the admin's. Both are refused where accounts are made and at sign-in.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="provider_account"
    )
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="users")
    created_at = models.DateTimeField(default=timezone.now)

    objects = ProviderUserQuerySet.as_manager()

    class Meta:
        ordering = ["provider_id", "user_id"]
        verbose_name = "provider user"

    def __str__(self) -> str:
        return f"{self.user.get_username()} ({self.provider})"

    @property
    def actor(self) -> str:
        """How audit lines name this account's actions: ``provider:<username>``."""
        return f"provider:{self.user.get_username()}"
