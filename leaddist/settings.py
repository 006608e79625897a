"""Settings for leaddist; deploy-specific values come from the environment (docs/OPERATIONS.md,
Configuration)."""

import base64
import hashlib
import hmac
import re
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off: it signs sessions and CSRF tokens, and "
            "the development default is public. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    SECRET_KEY = "insecure-dev-key-do-not-use-in-production"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- HTTPS and proxies (docs/OPERATIONS.md, Production environment) --------------------------
# Secure by default with DEBUG off; each can be overridden from the environment.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Load balancers and container probes call /healthz over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# Reverse proxies in front of the app. With N > 0 the app trusts X-Forwarded-Proto (HTTPS
# detection) and takes the client address N hops from the right of X-Forwarded-For, the
# address the outermost trusted proxy saw. With 0 both headers are ignored: a client could
# forge them.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
if TRUSTED_PROXY_COUNT > 0:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Pages may run only their own scripts: no inline script, no script from elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)

INSTALLED_APPS = [
    # First, so that `manage.py runserver` serves ASGI (and so SSE) like production does.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_eventstream",
    # The task queue (background drains, deliveries): jobs are rows in PostgreSQL.
    "procrastinate.contrib.django",
    "events",
    # Serves the /api/docs assets (Swagger UI) from static files instead of a CDN.
    "ninja",
    "providers",
    "allocation",
    "credentials",
    "intake",
    "webhooks",
    # After providers: its admin adds the delivery endpoint to the provider's page.
    "delivery",
    "dashboard",
    # Lead returns by providers, and the quota they credit back (SPEC §9).
    "returns",
    # The provider portal (SPEC §9): provider accounts, their pages, API and stream.
    "portal",
]

# Under ASGI, leaddist.asgi loads async-native twins of Django's middleware in place of these
# (leaddist.http.middleware.ASYNC_TWINS); everything else, system checks included, sees this list.
MIDDLEWARE = [
    "leaddist.http.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "leaddist.http.middleware.ContentSecurityPolicyMiddleware",
    # Serves /static/ from the app itself, so daphne needs no web server in front.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "leaddist.http.middleware.ApiErrorShapeMiddleware",
    "leaddist.http.middleware.BusyDatabaseMiddleware",
]

ROOT_URLCONF = "leaddist.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "leaddist.wsgi.application"
ASGI_APPLICATION = "leaddist.asgi.application"

# --- Database -------------------------------------------------------------------------------
# PostgreSQL only: the engine's guarantees rest on row locks, which SQLite does not have.
DATABASE_URL = env.str("DATABASE_URL", default="")
if DATABASE_URL:
    _db = env.db_url_config(DATABASE_URL)
    if _db["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (postgres://...).")
else:
    from leaddist.embedded_db import embedded_database_config

    _db = embedded_database_config(BASE_DIR / ".pgdata")

# Threads per process that run views, and so hold database connections (leaddist.asgi). A few
# are enough: a lead's transaction waits on the network, not on Python, and more threads only
# fight over the interpreter's lock (docs/PERFORMANCE.md).
ASGI_THREADS = env.int("ASGI_THREADS", default=3)
DB_POOL_MIN_SIZE = env.int("DB_POOL_MIN_SIZE", default=2)
# psycopg's default max of 4 starves a threaded server; each process gets its own pool.
DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=20)
DB_POOL_TIMEOUT = env.float("DB_POOL_TIMEOUT", default=10.0)
# A lock wait longer than this fails the attempt; the engine retries, then answers 503 busy.
DB_LOCK_TIMEOUT_MS = env.int("DB_LOCK_TIMEOUT_MS", default=5000)
# The pool checks a connection before lending it, and replaces one that died while it waited
# (PostgreSQL restarted, pg_terminate_backend): a request or a background job never starts on a
# dead connection (leaddist.http.postgresql). The check needs no round trip; its cost per
# request is measured in docs/PERFORMANCE.md ("Checking pooled connections").
DB_POOL_CHECK = env.bool("DB_POOL_CHECK", default=True)

_db.setdefault("OPTIONS", {})
_db["OPTIONS"].update(
    {
        "pool": {
            "min_size": DB_POOL_MIN_SIZE,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": DB_POOL_TIMEOUT,
        },
        "options": f"-c lock_timeout={DB_LOCK_TIMEOUT_MS}",
        # Parameters travel apart from the SQL, and a statement run PREPARE_THRESHOLD times
        # on a connection is prepared there: PostgreSQL then skips parsing and planning it,
        # which was half of its work per lead (docs/PERFORMANCE.md). Pooled connections
        # live long, so the engine's few statements stay prepared. Not with DEBUG: its query
        # log would then rebuild every statement's text in Python, which costs the
        # single development process more than the planning costs PostgreSQL.
        "server_side_binding": not DEBUG,
        "prepare_threshold": env.int("DB_PREPARE_THRESHOLD", default=2),
    }
)
_db["CONN_MAX_AGE"] = 0  # the pool owns connection reuse
if DB_POOL_CHECK:
    _db["ENGINE"] = "leaddist.http.postgresql"
DATABASES = {"default": _db}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Engine ---------------------------------------------------------------------------------
# Attempts for one allocation when PostgreSQL reports a deadlock, serialization failure or
# lock timeout; after the last one the client gets 503 busy with Retry-After.
ALLOCATION_MAX_ATTEMPTS = env.int("ALLOCATION_MAX_ATTEMPTS", default=6)
# A lead waiting longer than this (seconds) becomes expired and is never allocated (SPEC §2a).
LEAD_MAX_WAIT = env.int("LEAD_MAX_WAIT", default=24 * 3600)
# How often the worker applies the routing rules' time transitions (hours beginning, time off
# ending, a cap window rolling over) and expires stale leads, in seconds (a cron field).
ROUTING_REFRESH_SECONDS = env.int("ROUTING_REFRESH_SECONDS", default=5)
BUSY_RETRY_AFTER_SECONDS = env.int("BUSY_RETRY_AFTER_SECONDS", default=1)
# A request that adds capacity (quota reset, provider resumed, quota raised, membership added)
# drains the waiting queue for at most this long; a background drain does the rest.
DRAIN_INLINE_SECONDS = env.float("DRAIN_INLINE_SECONDS", default=1.0)
# Intake remembers active services (by id and slug) this long per process; the engine checks
# under its lock that the service is still active (providers.selectors.active_services).
SERVICE_CACHE_SECONDS = env.float("SERVICE_CACHE_SECONDS", default=5.0)

# Requests to the API and the public form are refused above this size (SPEC §3), before
# anything reads the body.
MAX_BODY_BYTES = 64 * 1024

# Intake rate limits (docs/API.md, Rate limits), "<count>/<s|m|h>" per fixed window, "0" off.
# Counted in Redis with REDIS_URL, so they hold across processes and hosts; in-process
# otherwise. RATE_LIMIT_PER_KEY is the default of every API key without a limit of its own
# (ApiKey.rate_limit); it is sized so that a marketplace's burst through one key passes while
# a runaway client is cut off. RATE_LIMIT_PER_IP limits requests without a key, i.e. the public
# form, per client address. Staff sessions are not limited.
RATE_LIMIT_PER_KEY = env.str("RATE_LIMIT_PER_KEY", default="1000/s")
# Each process remembers an API key it verified this long: a revoked key is refused at once by
# the process that revoked it, and by every other process within this many seconds.
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=2.0)
RATE_LIMIT_PER_IP = env.str("RATE_LIMIT_PER_IP", default="30/m")
for _name, _value in (
    ("RATE_LIMIT_PER_KEY", RATE_LIMIT_PER_KEY),
    ("RATE_LIMIT_PER_IP", RATE_LIMIT_PER_IP),
):
    if not re.fullmatch(r"0|[1-9][0-9]*/[smh]", _value):
        raise ImproperlyConfigured(f'{_name} must look like "120/m" (per s, m or h) or be "0".')

# Logs carry a keyed hash of phone numbers, never the numbers: a plain hash of a 7-15 digit
# number is brute-forced in minutes. Empty: a key derived from SECRET_KEY.
PHONE_HASH_KEY = env.str("PHONE_HASH_KEY", default="")

# --- Quota-reset webhook (SPEC §5) ---------------------------------------------------------
# The Standard Webhooks secret shared with the payment gateway (whsec_<base64>). When set,
# every call to /api/webhook/reset-quota must be signed with it. Unset, calls are accepted
# unsigned, which only DEBUG allows: anyone could otherwise restore every provider's quota.
WEBHOOK_SECRET = env.str("WEBHOOK_SECRET", default="")
if WEBHOOK_SECRET:
    from standardwebhooks import Webhook

    try:
        Webhook(WEBHOOK_SECRET)
    except Exception as exc:
        raise ImproperlyConfigured(
            "WEBHOOK_SECRET is not a valid Standard Webhooks secret (whsec_<base64>)."
        ) from exc
elif not DEBUG:
    raise ImproperlyConfigured(
        "WEBHOOK_SECRET must be set when DEBUG is off: without it anyone could reset quotas "
        "through /api/webhook/reset-quota. Set it to the gateway's whsec_... secret."
    )

# --- Metrics (docs/OPERATIONS.md, Metrics) --------------------------------------------------
# Prometheus scrapes GET /metrics with `Authorization: Bearer <METRICS_TOKEN>`. Optional: unset,
# only staff sessions may read the metrics, and nothing else changes. Set, it must be long
# enough not to be guessed when DEBUG is off.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN and len(METRICS_TOKEN) < 24 and not DEBUG:
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be at least 24 characters long when DEBUG is off. Generate one "
        "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
    )

# --- Lead delivery (issue 11, docs/DELIVERY.md) --------------------------------------------
# Provider endpoints may resolve to private, loopback, link-local or metadata addresses, and use
# http, only with this on: for tests and local development, never in production.
ALLOW_PRIVATE_DELIVERY_TARGETS = env.bool("ALLOW_PRIVATE_DELIVERY_TARGETS", default=False)
# An attempt succeeds with a 2xx within this many seconds (DNS and connection included).
DELIVERY_TIMEOUT_SECONDS = env.float("DELIVERY_TIMEOUT_SECONDS", default=10.0)
# Failed attempts are retried after BASE, 2*BASE, 4*BASE... seconds, at most MAX, with jitter,
# until the delivery has been retried this many hours; then it is failed.
DELIVERY_RETRY_BASE_SECONDS = env.float("DELIVERY_RETRY_BASE_SECONDS", default=30.0)
DELIVERY_RETRY_MAX_SECONDS = env.float("DELIVERY_RETRY_MAX_SECONDS", default=3600.0)
DELIVERY_RETRY_HOURS = env.float("DELIVERY_RETRY_HOURS", default=24.0)
# Attempts one delivery worker runs at once (`make worker`, `make serve`): each waits on the
# network, so a slow or hanging endpoint holds one of them for at most the timeout.
DELIVERY_CONCURRENCY = env.int("DELIVERY_CONCURRENCY", default=20)
# How often an idle delivery worker asks for due deliveries (while its last claim came back
# full it asks again as soon as it has room): at most this long between a lead's commit and its
# deliveries' start. A claim is one short indexed statement, so asking often costs little.
DELIVERY_POLL_SECONDS = env.float("DELIVERY_POLL_SECONDS", default=0.1)
# Attempts in flight to one provider at once, across all delivery workers on all hosts (counted
# by every claim, delivery/queue.py): a provider whose endpoint hangs, with many leads, holds
# this many worker slots in all, and its other deliveries wait their turn.
DELIVERY_PER_PROVIDER_CONCURRENCY = env.int("DELIVERY_PER_PROVIDER_CONCURRENCY", default=4)

# Fernet keys that encrypt the providers' webhook signing secrets in the database
# (docs/DELIVERY.md, "Signing secrets at rest"), comma-separated: the first encrypts, every one
# decrypts, so a new key goes in front and the old one stays until
# `manage.py rotate_delivery_secret_keys` has re-encrypted every secret. Empty with DEBUG on: one
# key derived from SECRET_KEY, so development needs no setup.
DELIVERY_SECRET_KEYS = [key for key in env.list("DELIVERY_SECRET_KEYS", default=[]) if key]
if not DELIVERY_SECRET_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DELIVERY_SECRET_KEYS must be set when DEBUG is off: it encrypts the providers' "
            "webhook signing secrets in the database. Generate a key with `python -c 'from "
            "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`."
        )
    DELIVERY_SECRET_KEYS = [
        base64.urlsafe_b64encode(
            hmac.new(SECRET_KEY.encode(), b"leaddist.delivery-secrets", hashlib.sha256).digest()
        ).decode()
    ]
else:
    from cryptography.fernet import Fernet

    for _position, _key in enumerate(DELIVERY_SECRET_KEYS, start=1):
        try:
            Fernet(_key)
        except ValueError as exc:
            # The position, never the key: this message ends up in logs.
            raise ImproperlyConfigured(
                f"DELIVERY_SECRET_KEYS: key {_position} is not a Fernet key (32 bytes in "
                "url-safe base64, as Fernet.generate_key() makes)."
            ) from exc

# Email: EMAIL_URL, e.g. smtp+tls://user:password@smtp.example.com:587; the console by default
# (development: emails are printed by the worker).
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="leaddist <leads@localhost>")
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
# The one-time link that lets a new provider account set its password (Django's password-reset
# token; Django's own default, stated here because the portal promises it).
PASSWORD_RESET_TIMEOUT = 72 * 3600

# --- Provider portal (SPEC §9) ----------------------------------------------------------------
# Failed sign-ins to /portal/login/ per username and per client address ("<count>/<s|m|h>", "0"
# off); past either, attempts are refused until the window ends (portal/signin.py).
PORTAL_SIGN_IN_FAILURES_PER_USERNAME = env.str(
    "PORTAL_SIGN_IN_FAILURES_PER_USERNAME", default="10/h"
)
PORTAL_SIGN_IN_FAILURES_PER_CLIENT = env.str("PORTAL_SIGN_IN_FAILURES_PER_CLIENT", default="30/h")
for _name, _value in (
    ("PORTAL_SIGN_IN_FAILURES_PER_USERNAME", PORTAL_SIGN_IN_FAILURES_PER_USERNAME),
    ("PORTAL_SIGN_IN_FAILURES_PER_CLIENT", PORTAL_SIGN_IN_FAILURES_PER_CLIENT),
):
    if not re.fullmatch(r"0|[1-9][0-9]*/[smh]", _value):
        raise ImproperlyConfigured(f'{_name} must look like "10/h" (per s, m or h) or be "0".')
# Returns: a provider may return a lead this many days after it got it. Returns for a wrong
# number, a duplicate or spam are approved at once while the provider's approved returns this
# cycle stay within the larger of 3 and this percentage of its leads this cycle.
RETURN_WINDOW_DAYS = env.int("RETURN_WINDOW_DAYS", default=7)
RETURN_AUTO_APPROVE_PERCENT = env.int("RETURN_AUTO_APPROVE_PERCENT", default=10)

LANGUAGE_CODE = "en-us"
# Dates and times to the second everywhere, the admin included (leaddist/formats/en/formats.py).
FORMAT_MODULE_PATH = ["leaddist.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed copies made by collectstatic; no manifest, so pages render without one.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Redis ---------------------------------------------------------------------------------
# Optional: shared rate-limit counters and live-event wake-ups between processes. Every call
# fails within REDIS_TIMEOUT_SECONDS, and after a failure Redis is skipped for
# REDIS_BREAKER_SECONDS (leaddist/http/redis_client.py), so an outage costs requests nothing.
REDIS_URL = env.str("REDIS_URL", default="")
REDIS_TIMEOUT_SECONDS = env.float("REDIS_TIMEOUT_SECONDS", default=0.25)
REDIS_BREAKER_SECONDS = env.float("REDIS_BREAKER_SECONDS", default=5.0)

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Live dashboard over SSE (SPEC §6) ------------------------------------------------------
# Events are written to our own log (events.Event) in the transaction that makes them true,
# and django-eventstream's storage API reads that log.
EVENTSTREAM_STORAGE_CLASS = "events.storage.EventLogStorage"
# One channel, "dashboard", readable by staff sessions only.
EVENTSTREAM_CHANNELMANAGER_CLASS = "dashboard.sse.StaffChannelManager"
# Each process reads the log when a commit wakes it (locally, or through Redis), and at least
# this often, so an event is never later than this even without Redis.
EVENT_POLL_SECONDS = env.float("EVENT_POLL_SECONDS", default=0.5)
# During a burst each process sends its streams what committed at most this often: a wake-up
# costs every open stream a write, an event in a wake-up almost nothing.
EVENT_BATCH_SECONDS = env.float("EVENT_BATCH_SECONDS", default=0.25)
EVENT_KEEP_ALIVE_SECONDS = env.float("EVENT_KEEP_ALIVE_SECONDS", default=20.0)
# An open stream re-reads its session this often and closes once it is no longer staff.
EVENT_SESSION_RECHECK_SECONDS = env.float("EVENT_SESSION_RECHECK_SECONDS", default=60.0)
# Recent events each process keeps encoded in memory for its streams.
EVENT_STREAM_BUFFER = env.int("EVENT_STREAM_BUFFER", default=5000)
# How long the log keeps events: a dashboard away longer than this starts afresh.
EVENT_RETENTION_HOURS = env.int("EVENT_RETENTION_HOURS", default=168)
# Base URL the test tools send their requests to (the app itself). Empty: the URL the page was
# requested on. Set it when that is not reachable from the server, e.g. behind a proxy.
SELF_BASE_URL = env.str("SELF_BASE_URL", default="")

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # procrastinate logs every job, and httpx every request of the delivery worker, at INFO;
    # their warnings and errors are what operators need (the worker logs failed attempts itself).
    "loggers": {
        "pgserver": {"level": "WARNING"},
        "procrastinate": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        # psycopg_pool warns once per dead connection it discards; leaddist.http.db says it
        # once a minute instead (a PostgreSQL restart kills every pooled connection at once).
        "psycopg.pool": {"level": "ERROR"},
    },
}
