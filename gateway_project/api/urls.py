"""/_gateway/api/v1/: the core's endpoints, every app's viewsets (registry.api_viewsets), the schema and docs."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from gateway_project import registry
from gateway_project.api import views

# SimpleRouter: no format-suffix routes, since object names may hold dots (api.v2).
router = SimpleRouter()
for prefix, viewset in registry.api_viewsets:
    # A viewset below another object's URL (a regular expression in its prefix) names its routes itself.
    router.register(prefix, viewset, basename=getattr(viewset, "basename", prefix))
router.register("audit", views.AuditViewSet, basename="audit")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("config/", views.ConfigExportView.as_view(), name="api-config"),
    path("config/import/", views.ConfigImportView.as_view(), name="api-config-import"),
    path("status/", views.StatusView.as_view(), name="api-status"),
    *router.urls,
]
