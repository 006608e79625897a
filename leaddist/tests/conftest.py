"""Fixtures of the project-wide tests: a real ASGI server (daphne through leaddist.serve)."""

from leaddist.tests.asgi_server import asgi_server_factory  # noqa: F401 (a fixture)
