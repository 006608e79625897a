"""The provider portal (SPEC §9), namespaced "portal"."""

from django.urls import path

from portal import views

app_name = "portal"

urlpatterns = [
    path("portal/", views.home, name="home"),
    path("portal/login/", views.sign_in, name="login"),
    path("portal/logout/", views.sign_out, name="logout"),
    path("portal/set-password/<uidb64>/<token>/", views.set_password, name="set_password"),
]
