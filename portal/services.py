"""Provider accounts: creating them, their one-time set-password link, deactivating them."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from portal.models import ProviderUser
from providers.models import Provider


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
