"""Production settings (SPEC §7, docs/OPERATIONS.md: Production environment) and the security
headers."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.test import Client
from django.urls import Resolver404, resolve

# The documented production environment, with throwaway values.
PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
    "DELIVERY_SECRET_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "ALLOWED_HOSTS": "leads.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://leads.example.com",
    # `check` does not connect: any PostgreSQL URL will do.
    "DATABASE_URL": os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1/leaddist",
}
# Variables a developer's shell or .env could hold that would change what is checked.
OVERRIDES = (
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
)


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    environment.update(DJANGO_SETTINGS_MODULE="leaddist.settings", **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        env=environment,
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_passes_under_the_documented_production_environment():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION_ENV)

    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_when_a_secure_default_is_turned_off():
    env = PRODUCTION_ENV | {"SECURE_HSTS_SECONDS": "0", "SESSION_COOKIE_SECURE": "false"}

    result = run_manage("check", "--deploy", "--fail-level", "WARNING", **env)

    assert result.returncode != 0
    assert "security.W004" in result.stderr
    assert "security.W012" in result.stderr


def test_app_refuses_to_start_without_a_secret_key_and_says_why():
    env = PRODUCTION_ENV | {"SECRET_KEY": ""}

    result = run_manage("check", **env)

    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY must be set when DEBUG is off" in result.stderr
    assert "signs sessions and CSRF tokens" in result.stderr


def test_app_refuses_to_start_without_delivery_secret_keys_and_says_why():
    env = PRODUCTION_ENV | {"DELIVERY_SECRET_KEYS": ""}

    result = run_manage("check", **env)

    assert result.returncode != 0
    assert (
        "ImproperlyConfigured: DELIVERY_SECRET_KEYS must be set when DEBUG is off" in result.stderr
    )
    assert "encrypts the providers' webhook signing secrets" in result.stderr


def test_app_refuses_a_delivery_secret_key_that_is_not_a_fernet_key_without_showing_it():
    env = PRODUCTION_ENV | {
        "DELIVERY_SECRET_KEYS": PRODUCTION_ENV["DELIVERY_SECRET_KEYS"] + ",not-a-fernet-key"
    }

    result = run_manage("check", **env)

    assert result.returncode != 0
    assert "DELIVERY_SECRET_KEYS: key 2 is not a Fernet key" in result.stderr
    assert "not-a-fernet-key" not in result.stderr


def test_with_debug_on_and_no_delivery_secret_keys_one_is_derived_from_the_secret_key():
    show = "from django.conf import settings; print(','.join(settings.DELIVERY_SECRET_KEYS))"

    runs = [
        run_manage("shell", "-c", show, DEBUG="true", DELIVERY_SECRET_KEYS="", SECRET_KEY=key)
        for key in ("dev-key-one", "dev-key-one", "dev-key-two")
    ]

    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    keys = [run.stdout.strip().splitlines()[-1] for run in runs]  # after shell's banner
    Fernet(keys[0])  # a valid Fernet key, so `make run` and `make test` need no setup
    assert keys[0] == keys[1] != keys[2]  # the same for every process of one SECRET_KEY


@pytest.mark.parametrize("url", ["sqlite:///leaddist.sqlite3", "mysql://root@127.0.0.1/leaddist"])
def test_app_refuses_a_database_other_than_postgresql(url):
    result = run_manage("check", **(PRODUCTION_ENV | {"DATABASE_URL": url}))

    assert result.returncode != 0
    assert "DATABASE_URL must point at PostgreSQL" in result.stderr


@pytest.mark.parametrize("value", ["ten/m", "10/d", "10", "-1/m", "10/ m"])
def test_app_refuses_a_malformed_rate_limit(value):
    result = run_manage("check", RATE_LIMIT_PER_KEY=value)

    assert result.returncode != 0
    assert "RATE_LIMIT_PER_KEY must look like" in result.stderr


# --- HTTPS redirect -------------------------------------------------------------------------------


@pytest.fixture
def https_only(settings):
    settings.SECURE_SSL_REDIRECT = True
    return Client()  # built after the setting: SecurityMiddleware reads it when it starts


def test_plain_http_is_redirected_to_https(https_only, db):
    response = https_only.get("/request-service")

    assert response.status_code == 301
    assert response["Location"] == "https://testserver/request-service"


def test_healthz_answers_plain_http_probes(https_only, db):
    response = https_only.get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_forwarded_proto_is_trusted_only_behind_a_proxy():
    # TRUSTED_PROXY_COUNT is 0 in tests: a client cannot claim HTTPS with a header.
    assert django_settings.TRUSTED_PROXY_COUNT == 0
    assert not getattr(django_settings, "SECURE_PROXY_SSL_HEADER", None)


# --- Content-Security-Policy ----------------------------------------------------------------------

PAGES = [
    "/request-service",
    "/admin/login/",
    "/admin/",
    "/admin/providers/provider/1/change/",
    "/admin/providers/service/1/change/",
    "/dashboard",
    "/test-tools",
    "/api/docs",
]
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def page(admin_client, path):
    try:
        resolve(path)
    except Resolver404:
        pytest.fail(f"{path} is not routed: a security test never skips a page")
    # Signed-in staff are sent on from the login page: it is seen signed out.
    response = (Client() if path == "/admin/login/" else admin_client).get(path)
    assert response.status_code == 200, path
    return response


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_a_policy_that_forbids_inline_scripts(admin_client, seeded, path):
    response = page(admin_client, path)

    policy = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in policy
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize("path", PAGES)
def test_pages_carry_no_inline_script_or_event_handler(admin_client, seeded, path):
    html = page(admin_client, path).content.decode()

    assert not INLINE_SCRIPT.findall(html)
    assert not EVENT_HANDLER.findall(html)


def test_api_docs_load_their_assets_from_our_own_static_files(admin_client, seeded):
    html = admin_client.get("/api/docs").content.decode()

    # Scripts, stylesheets and icons; the header's navigation links are not assets.
    assets = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', html)
    assert "/static/ninja/swagger-ui-bundle.js" in assets
    assert "/static/ninja/swagger-ui.css" in assets
    assert all(asset.startswith("/static/") for asset in assets), assets


def test_healthz_reports_redis_without_failing_on_it(client, db, settings, redis_url):
    settings.REDIS_URL = redis_url
    up = client.get("/healthz", HTTP_HOST="localhost")
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    down = client.get("/healthz", HTTP_HOST="localhost")
    settings.REDIS_URL = ""
    unset = client.get("/healthz", HTTP_HOST="localhost")

    assert (up.status_code, up.json()) == (200, {"status": "ok", "database": "ok", "redis": "ok"})
    assert (down.status_code, down.json()["redis"]) == (200, "unavailable")
    assert unset.json()["redis"] == "disabled"
