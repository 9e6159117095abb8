"""The management API's upstreams, their targets, and routes (registered with the core in apps.py)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from gateway_project.api.serializers import CommaListField, ServiceModelSerializer, StatusListField
from gateway_project.api.viewsets import NAME_IN_URL, ServiceViewSet, actor_of
from proxy import services, tester
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


class RouteTestSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=tester.METHODS, default="GET")
    path = serializers.CharField(max_length=2048, help_text="Path and query, starting with '/'.")
    host = serializers.CharField(
        max_length=255, required=False, help_text="The Host header; default: the route's host, else GATEWAY_LISTEN."
    )
    headers = serializers.DictField(child=serializers.CharField(max_length=4096, allow_blank=True), required=False)
    body = serializers.CharField(allow_blank=True, required=False, default="", trim_whitespace=False)
    client_ip = serializers.IPAddressField(required=False, help_text="Default: the caller's address.")
    dry_run = serializers.BooleanField(default=True, help_text="Check rate limits without counting the request.")


class AttemptSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    outcome = serializers.CharField()
    ms = serializers.FloatField()


class PolicyDecisionSerializer(serializers.Serializer):
    policy = serializers.CharField()
    limit = serializers.CharField()
    decision = serializers.CharField()
    remaining = serializers.IntegerField()
    retry_after = serializers.IntegerField()
    shadow = serializers.BooleanField()


class TraceSerializer(serializers.Serializer):
    route = serializers.CharField()
    method = serializers.CharField()
    url = serializers.CharField()
    client_ip = serializers.CharField()
    dry_run = serializers.BooleanField()
    matched = serializers.CharField(allow_null=True, help_text="The route the request matched (null: none).")
    why = serializers.CharField()
    ratelimit = PolicyDecisionSerializer(many=True)
    ratelimit_note = serializers.CharField(allow_blank=True)
    breaker = serializers.CharField(allow_blank=True)
    upstream_url = serializers.CharField(allow_null=True)
    target = serializers.CharField(allow_null=True)
    attempts = AttemptSerializer(many=True)
    status = serializers.IntegerField(allow_null=True, help_text="null: the request was not sent.")
    reason = serializers.CharField(allow_blank=True)
    answered_by = serializers.CharField(allow_blank=True, help_text="upstream, or gateway (its own answer).")
    headers = serializers.ListField(child=serializers.ListField(child=serializers.CharField(allow_blank=True)))
    body = serializers.CharField(allow_blank=True, trim_whitespace=False, help_text="The first 4 KiB.")
    body_truncated = serializers.BooleanField()
    took_ms = serializers.FloatField()


class RouteViewSet(ServiceViewSet):
    """Path prefixes (and hosts) forwarded to upstreams; changes are live on every worker within a second."""

    queryset = Route.objects.select_related("upstream")
    serializer_class = RouteSerializer
    save_service = services.save_route
    delete_service = services.delete_route
    service_arg = "route"
    action_permissions = {"test": ["proxy.view_route", "proxy.change_route"]}

    @extend_schema(
        summary="Send a request through the gateway's pipeline and trace every decision",
        request=RouteTestSerializer,
        responses={200: TraceSerializer},
    )
    @action(detail=True, methods=["post"])
    def test(self, request, name=None):
        route = self.get_object()
        params = RouteTestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        try:
            trace = tester.run(
                route_name=route.name,
                method=data["method"],
                path=data["path"],
                host=data.get("host") or tester.default_host(route),
                headers=data.get("headers") or {},
                body=data["body"].encode("utf-8", "surrogateescape"),
                client_ip=data.get("client_ip") or request.gateway.client_ip,
                dry_run=data["dry_run"],
                actor=actor_of(request),
            )
        except tester.TestRequestError as exc:
            raise ValidationError({"request": [str(exc)]}) from exc
        return Response(TraceSerializer(trace.as_dict()).data)
