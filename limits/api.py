"""The management API's consumers, API keys and rate limit policies, with a policy's live usage."""

from __future__ import annotations

from django.apps import apps
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from gateway_project.api.permissions import OperatorModelPermissions
from gateway_project.api.serializers import ServiceModelSerializer
from gateway_project.api.viewsets import ServiceViewSet, actor_of
from limits import services
from limits.models import ApiKey, Consumer, RateLimitPolicy


class ConsumerSerializer(ServiceModelSerializer):
    class Meta:
        model = Consumer
        fields = ("name", "enabled", "description", "created_at", "updated_at")


class PolicySerializer(ServiceModelSerializer):
    # Routes are the proxy app's: known here by name, through Django's app registry.
    route = serializers.SlugRelatedField(
        slug_field="name", queryset=apps.get_model("proxy", "Route").objects.all(), allow_null=True, required=False
    )
    consumer = serializers.SlugRelatedField(
        slug_field="name", queryset=Consumer.objects.all(), allow_null=True, required=False
    )

    class Meta:
        model = RateLimitPolicy
        fields = (
            "name",
            "scope",
            "route",
            "consumer",
            "key_by",
            "header_name",
            "limit",
            "window_seconds",
            "algorithm",
            "burst",
            "mode",
            "on_redis_failure",
            "legacy_headers",
            "enabled",
            "created_at",
            "updated_at",
        )


class UsageSerializer(serializers.Serializer):
    client = serializers.CharField(help_text="The counted value, e.g. ip:<203.0.113.7>.")
    used = serializers.IntegerField()
    limit = serializers.IntegerField()
    expires_in = serializers.FloatField(help_text="Seconds until the counter expires.")


class ClearSerializer(serializers.Serializer):
    client = serializers.CharField(max_length=300, help_text="As the usage lists it, e.g. ip:<203.0.113.7>.")


class ClearedSerializer(serializers.Serializer):
    client = serializers.CharField()
    cleared = serializers.BooleanField(help_text="False when the counter had already expired.")


class ApiKeySerializer(ServiceModelSerializer):
    consumer = serializers.SlugRelatedField(slug_field="name", queryset=Consumer.objects.all())

    class Meta:
        model = ApiKey
        fields = ("id", "consumer", "label", "prefix", "created_at", "revoked_at")
        read_only_fields = ("prefix", "revoked_at")


class ApiKeyLabelSerializer(ApiKeySerializer):
    class Meta(ApiKeySerializer.Meta):
        read_only_fields = ("consumer", "prefix", "revoked_at")


class NewApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself: shown in this answer only, never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = (*ApiKeySerializer.Meta.fields, "key")


class ConsumerViewSet(ServiceViewSet):
    """Clients of the gateway, known by their API keys. Deleting one deletes its keys and its policies."""

    queryset = Consumer.objects.all()
    serializer_class = ConsumerSerializer
    save_service = services.save_consumer
    delete_service = services.delete_consumer
    service_arg = "consumer"


class PolicyViewSet(ServiceViewSet):
    """Rate limit policies, and what they count right now."""

    queryset = RateLimitPolicy.objects.select_related("route", "consumer")
    serializer_class = PolicySerializer
    save_service = services.save_policy
    delete_service = services.delete_policy
    service_arg = "policy"
    action_permissions = {
        "usage": ["limits.view_ratelimitpolicy"],
        "clear": ["limits.view_ratelimitpolicy", "limits.change_ratelimitpolicy"],
    }

    @extend_schema(summary="The policy's busiest clients right now", responses={200: UsageSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def usage(self, request, name=None):
        rows = services.policy_usage(policy=self.get_object(), top=100)
        return Response(UsageSerializer(rows, many=True).data)

    @extend_schema(summary="Clear one client's counter", request=ClearSerializer, responses={200: ClearedSerializer})
    @action(detail=True, methods=["post"])
    def clear(self, request, name=None):
        params = ClearSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        client = params.validated_data["client"]
        try:
            cleared = services.clear_counter(policy=self.get_object(), client=client, actor=actor_of(request))
        except ValueError as exc:
            raise ValidationError({"client": [str(exc)]}) from exc
        return Response({"client": client, "cleared": cleared})


class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Consumers' API keys, by id. Creating one answers with the key, once; keys are revoked, not edited."""

    queryset = ApiKey.objects.select_related("consumer")
    serializer_class = ApiKeySerializer
    lookup_value_regex = "[0-9]{1,18}"
    permission_classes = [OperatorModelPermissions]
    action_permissions = {"revoke": ["limits.change_apikey"]}

    def get_queryset(self):
        keys = super().get_queryset()
        consumer = self.request.query_params.get("consumer")
        return keys.filter(consumer__name=consumer) if consumer else keys

    def get_serializer_class(self):
        if self.action in ("update", "partial_update"):
            return ApiKeyLabelSerializer
        return super().get_serializer_class()

    def save_object(self, key: ApiKey) -> None:
        services.save_api_key(key=key, actor=actor_of(self.request))

    @extend_schema(summary="Create a key (the answer holds it, once)", responses={201: NewApiKeySerializer})
    def create(self, request, *args, **kwargs):
        params = ApiKeySerializer(data=request.data)
        params.is_valid(raise_exception=True)
        key, plaintext = services.create_api_key(
            consumer=params.validated_data["consumer"],
            label=params.validated_data.get("label", ""),
            actor=actor_of(request),
        )
        return Response({**ApiKeySerializer(key).data, "key": plaintext}, status=201)

    @extend_schema(summary="Revoke a key (live on every gateway within a second)", request=None)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        key = get_object_or_404(self.get_queryset(), pk=pk)
        services.revoke_api_key(key=key, actor=actor_of(request))
        return Response(ApiKeySerializer(key).data)
