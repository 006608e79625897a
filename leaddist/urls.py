"""URL wiring. Routes are exactly those of SPEC §3-§7, without trailing slashes."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from leaddist.api import api
from leaddist.health import database_ok, redis_health
from leaddist.scrape import metrics


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers (on a fresh connection if the pooled one died), 503
    otherwise; Redis is reported, never failed on.

    Without Redis the app still takes leads (rate limits count per process, live events arrive
    by polling), so an unavailable Redis must not take a process out of its load balancer.
    """
    redis = redis_health()
    if not database_ok():
        return JsonResponse(
            {"status": "unavailable", "database": "unavailable", "redis": redis}, status=503
        )
    return JsonResponse({"status": "ok", "database": "ok", "redis": redis})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("api/", api.urls),
    path("", include("intake.urls")),
    path("", include("dashboard.urls")),
]
