"""HTML routes of the allocation app, namespaced "allocation"."""

from django.urls import path

from allocation import dashboard, sse, testtools, views

app_name = "allocation"

urlpatterns = [
    path("request-service", views.request_service, name="request_service"),
    # Live dashboard and test tools (SPEC §6), staff only.
    path("api/events", sse.events_stream, name="events"),
    path("dashboard", dashboard.dashboard, name="dashboard"),
    path("dashboard/fragments", dashboard.fragments, name="dashboard_fragments"),
    path(
        "dashboard/providers/<int:provider_id>/leads",
        dashboard.provider_leads,
        name="provider_leads",
    ),
    path("test-tools", testtools.test_tools, name="test_tools"),
    path("test-tools/leads", testtools.generate_leads, name="test_tools_leads"),
    path("test-tools/webhook", testtools.fire_webhook, name="test_tools_webhook"),
    path("test-tools/reset", testtools.reset_quotas, name="test_tools_reset"),
]
