"""Live dashboard, its event stream and the test tools (SPEC §6), staff only; namespaced
"dashboard"."""

from django.urls import path

from dashboard import sse, testtools, views

app_name = "dashboard"

urlpatterns = [
    path("api/events", sse.events_stream, name="events"),
    path("dashboard", views.dashboard, name="dashboard"),
    path("dashboard/fragments", views.fragments, name="dashboard_fragments"),
    path(
        "dashboard/providers/<int:provider_id>/leads",
        views.provider_leads,
        name="provider_leads",
    ),
    path("test-tools", testtools.test_tools, name="test_tools"),
    path("test-tools/leads", testtools.generate_leads, name="test_tools_leads"),
    path("test-tools/webhook", testtools.fire_webhook, name="test_tools_webhook"),
    path("test-tools/reset", testtools.reset_quotas, name="test_tools_reset"),
]
