"""The management API's upstreams, their targets, and routes (registered with the core in apps.py)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework import serializers

from gateway_project.api.serializers import CommaListField, ServiceModelSerializer, StatusListField
from gateway_project.api.viewsets import NAME_IN_URL, ServiceViewSet
from proxy import services
from proxy.models import Route, Target, Upstream


class UpstreamSerializer(ServiceModelSerializer):
    retry_on_statuses = StatusListField(
        required=False, help_text=Upstream._meta.get_field("retry_on_statuses").help_text
    )
    eject_on_statuses = StatusListField(
        required=False, help_text=Upstream._meta.get_field("eject_on_statuses").help_text
    )
    health_check_statuses = StatusListField(
        low=200,
        high=399,
        required=False,
        help_text=Upstream._meta.get_field("health_check_statuses").help_text,
    )
    targets = serializers.SlugRelatedField(
        slug_field="address",
        many=True,
        read_only=True,
        help_text="host:port of each target (change them under /upstreams/<name>/targets/); [] sends to the base "
        "URL's own host and port.",
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
            "targets",
            "balancing",
            "eject_consecutive_failures",
            "eject_seconds",
            "eject_max_seconds",
            "eject_max_percent",
            "eject_on_statuses",
            "health_check_path",
            "health_check_interval",
            "health_check_timeout",
            "health_check_statuses",
            "healthy_threshold",
            "unhealthy_threshold",
            "retry_budget_percent",
            "retry_budget_min",
            "created_at",
            "updated_at",
        )


class TargetSerializer(ServiceModelSerializer):
    class Meta:
        model = Target
        fields = ("address", "weight", "enabled")


class RouteSerializer(ServiceModelSerializer):
    methods = CommaListField(required=False, help_text="Methods this route accepts (GET implies HEAD); [] = all.")
    upgrade_protocols = CommaListField(required=False, help_text=Route._meta.get_field("upgrade_protocols").help_text)
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
            "retry_idempotency_key",
            "deadline_header",
            "upgrade_protocols",
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


class TargetViewSet(ServiceViewSet):
    """The servers of one upstream (host:port, weight, enabled); every worker balances over them within a second.
    Disabling a target drains it: no new requests, those under way finish."""

    basename = "upstream-targets"
    queryset = Target.objects.select_related("upstream")
    serializer_class = TargetSerializer
    save_service = services.save_target
    delete_service = services.delete_target
    service_arg = "target"
    lookup_field = "address"
    lookup_value_regex = r"[^/]+"

    def upstream(self) -> Upstream:
        return get_object_or_404(Upstream, name=self.kwargs["upstream"])

    def get_queryset(self):
        return super().get_queryset().filter(upstream=self.upstream())

    def save_object(self, obj) -> None:
        obj.upstream = self.upstream() if obj.pk is None else obj.upstream
        super().save_object(obj)


#: Where TargetViewSet is registered: below its upstream.
TARGETS_PREFIX = rf"upstreams/(?P<upstream>{NAME_IN_URL})/targets"


class RouteViewSet(ServiceViewSet):
    """Path prefixes (and hosts) forwarded to upstreams; changes are live on every worker within a second."""

    queryset = Route.objects.select_related("upstream")
    serializer_class = RouteSerializer
    save_service = services.save_route
    delete_service = services.delete_route
    service_arg = "route"
