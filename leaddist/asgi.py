"""ASGI entry point, served by daphne."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaddist.settings")

django_application = get_asgi_application()

from leaddist.middleware import AsgiBodySizeLimit  # noqa: E402

application = AsgiBodySizeLimit(django_application)
