"""The public request form, namespaced "intake"."""

from django.urls import path

from intake import views

app_name = "intake"

urlpatterns = [
    path("request-service", views.request_service, name="request_service"),
]
