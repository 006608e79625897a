"""The provider portal (SPEC §9), namespaced "portal"."""

from django.urls import path

from portal import api, sse, views

app_name = "portal"

urlpatterns = [
    path("portal/", views.home, name="home"),
    path("portal/login/", views.sign_in, name="login"),
    path("portal/logout/", views.sign_out, name="logout"),
    path("portal/set-password/<uidb64>/<token>/", views.set_password, name="set_password"),
    path("portal/summary", views.summary, name="summary"),
    path("portal/pause", views.pause, name="pause"),
    path("portal/resume", views.resume, name="resume"),
    path("portal/endpoint", views.endpoint, name="endpoint"),
    path("portal/endpoint/rotate", views.rotate_secret, name="rotate_secret"),
    path("portal/routing", views.routing, name="routing"),
    path("portal/leads/<int:lead_id>/row", views.lead_row, name="lead_row"),
    path("portal/leads/<int:lead_id>/return", views.return_form, name="return_lead"),
    path("portal/api/leads", api.leads, name="api_leads"),
    path("portal/api/leads/<int:lead_id>", api.lead, name="api_lead"),
    path("portal/api/leads/<int:lead_id>/return", api.return_one, name="api_return"),
    path("portal/api/provider", api.provider, name="api_provider"),
    path("portal/api/events", sse.events_stream, name="events"),
    path("portal/api/pause", api.pause, name="api_pause"),
    path("portal/api/resume", api.resume, name="api_resume"),
    path("portal/api/endpoint", api.endpoint, name="api_endpoint"),
    path("portal/api/endpoint/rotate-secret", api.rotate_secret, name="api_rotate_secret"),
    path("portal/api/routing", api.routing, name="api_routing"),
    path("portal/api/<path:rest>", api.unknown_route, name="api_unknown"),
]
