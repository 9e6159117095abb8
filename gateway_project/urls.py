from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from gateway_project import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path(settings.GATEWAY_ADMIN_PATH.strip("/") + "/", admin.site.urls),
    path("_gateway/api/v1/", include("gateway_project.api.urls")),
]

if settings.GATEWAY_DEMO:
    urlpatterns.append(path("_demo/", include("proxy.demo")))

handler404 = "gateway_project.views.not_found"
handler500 = "gateway_project.views.server_error"
