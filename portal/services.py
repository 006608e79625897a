"""Provider accounts: creating them, their one-time set-password link, deactivating them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from leaddist.http.audit import log_event
from portal.delivery import change_endpoint
from portal.models import ProviderUser
from providers.models import Provider
from providers.services import (
    RoutingRules,
    pause_provider,
    resume_provider,
    routing_values,
    set_routing,
)


@dataclass(frozen=True)
class ProviderUserCreated:
    account: ProviderUser
    # The path of the one-time link that sets the password (None when a password was given).
    set_password_path: str | None


def set_password_path(account: ProviderUser) -> str:
    """A one-time link to set the account's password, valid PASSWORD_RESET_TIMEOUT (72 h).

    Django's password-reset token: it signs the user's password hash and last sign-in, so it
    stops working once used, or once the user signs in or changes the password otherwise.
    """
    user = account.user
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return reverse("portal:set_password", kwargs={"uidb64": uid, "token": token})


def create_provider_user(
    provider: Provider, *, username: str, email: str = "", password: str | None = None
) -> ProviderUserCreated:
    """Create a non-staff user tied to ``provider``; without a password, return the link that
    lets the user set one. Raises ValidationError for a taken or invalid username or email."""
    User = get_user_model()
    user = User(username=username, email=email, is_staff=False, is_superuser=False)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean(exclude=["password"])
    try:
        with transaction.atomic():
            user.save()
            account = ProviderUser.objects.create(user=user, provider=provider)
    except IntegrityError as exc:  # the same username created concurrently
        raise ValidationError({"username": "A user with that username already exists."}) from exc
    return ProviderUserCreated(account, None if password else set_password_path(account))


def set_provider_user_active(account: ProviderUser, *, active: bool) -> ProviderUser:
    """Let the account sign in again, or not: an inactive user's sessions stop at once (every
    request, and every open portal stream at its next re-check, reads the user afresh)."""
    user = account.user
    if user.is_active != active:
        user.is_active = active
        user.save(update_fields=["is_active"])
    return account


def _history(account: ProviderUser, message: str) -> None:
    """An entry in the provider's admin history ("History" on its admin page), made by the
    account: staff see there which provider user did what."""
    LogEntry.objects.log_actions(
        account.user_id,
        Provider.objects.filter(pk=account.provider_id),
        CHANGE,
        message,
        single_object=True,
    )


def _audit(account: ProviderUser, action: str, started: float, **fields: object) -> None:
    log_event(action, started=started, who=account.actor, provider_id=account.provider_id, **fields)


def set_provider_paused(
    account: ProviderUser, *, paused: bool, seen_version: int | None = None
) -> Provider:
    """Pause or resume the account's provider through the catalogue's own service (its locks,
    its version check, its drain on resume), then record who did it."""
    started = time.monotonic()
    provider = account.provider
    changed = (
        pause_provider(provider, expected_version=seen_version)
        if paused
        else resume_provider(provider, expected_version=seen_version)
    )
    _history(account, "Paused from the portal" if paused else "Resumed from the portal")
    _audit(account, "provider_status", started, status=changed.status)
    return changed


def set_provider_endpoint(
    account: ProviderUser, *, url: str | None, email: str | None, rotate_secret: bool = False
) -> str | None:
    """Change the account's provider's webhook URL and email, or rotate its secret, through
    delivery's service (SSRF guard, audit line as provider:<username>); return a new secret,
    shown once."""
    new_secret = change_endpoint(
        account.provider, url=url, email=email, rotate_secret=rotate_secret, who=account.actor
    )
    what = "Rotated the webhook secret" if rotate_secret else "Changed the delivery endpoint"
    _history(account, f"{what} from the portal")
    return new_secret


def set_provider_routing(
    account: ProviderUser, rules: RoutingRules, *, seen_version: int | None = None
) -> Provider:
    """Give the account's provider these routing rules through the admin's own service (its
    locks, its version check, its drain when capacity is added), within the limits staff set
    (ValidationError otherwise); then record who did it."""
    started = time.monotonic()
    provider = account.provider
    asked = {k for k, v in routing_values(rules).items() if getattr(provider, k) != v}
    # The rules were made from the provider as read for this request: without a version from
    # the caller, that read's is the one to check, so a staff edit since is refused, not undone.
    version = seen_version if seen_version is not None else provider.version
    changed = set_routing(provider, rules, expected_version=version, by_provider=True)
    if asked:
        _history(account, f"Changed the routing rules from the portal: {', '.join(sorted(asked))}")
        _audit(account, "provider_routing", started, fields=sorted(asked))
    return changed
