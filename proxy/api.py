"""The management API's upstreams and routes (registered with the core in apps.py)."""

from __future__ import annotations

from rest_framework import serializers

from gateway_project.api.serializers import CommaListField, ServiceModelSerializer, StatusListField
from gateway_project.api.viewsets import ServiceViewSet
from proxy import services
from proxy.models import Route, Upstream


class UpstreamSerializer(ServiceModelSerializer):
    retry_on_statuses = StatusListField(
        required=False, help_text=Upstream._meta.get_field("retry_on_statuses").help_text
    )

    class Meta:
        model = Upstream
        fields = (
            "name",
            "base_url",
            "connect_timeout",
            "read_timeout",
            "deadline",
            "max_retries",
            "backoff_factor",
            "backoff_max",
            "backoff_jitter",
            "retry_on_statuses",
            "tls_verify",
            "enabled",
            "created_at",
            "updated_at",
        )


class RouteSerializer(ServiceModelSerializer):
    methods = CommaListField(required=False, help_text="Methods this route accepts (GET implies HEAD); [] = all.")
    upstream = serializers.SlugRelatedField(slug_field="name", queryset=Upstream.objects.all())

    class Meta:
        model = Route
        fields = (
            "name",
            "path_prefix",
            "host",
            "methods",
            "strip_prefix",
            "upstream",
            "max_body_bytes",
            "require_api_key",
            "forward_api_key",
            "description",
            "enabled",
            "created_at",
            "updated_at",
        )


class UpstreamViewSet(ServiceViewSet):
    """Services behind the gateway. Deleting one that routes still use answers 409."""

    queryset = Upstream.objects.all()
    serializer_class = UpstreamSerializer
    save_service = services.save_upstream
    delete_service = services.delete_upstream
    service_arg = "upstream"


class RouteViewSet(ServiceViewSet):
    """Path prefixes (and hosts) forwarded to upstreams; changes are live on every worker within a second."""

    queryset = Route.objects.select_related("upstream")
    serializer_class = RouteSerializer
    save_service = services.save_route
    delete_service = services.delete_route
    service_arg = "route"
