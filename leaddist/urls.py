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


# The admin carries the product's name, as the dashboard and the portal do.
admin.site.site_header = "leaddist administration"
admin.site.site_title = "leaddist admin"
admin.site.index_title = "Catalogue, leads, deliveries, returns and accounts"
# No app list down the side of every page: the breadcrumbs and the index already lead there,
# and its 280 px hid the last columns of the wider lists (deliveries) at 1,400 px.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("api/", api.urls),
    path("", include("intake.urls")),
    path("", include("dashboard.urls")),
    path("", include("portal.urls")),
]
