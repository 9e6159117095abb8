"""The management API's breakers: live state, reset and the operator modes (registered in apps.py)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from breakers import services
from breakers.policy import MODES
from gateway_project.api.permissions import OperatorModelPermissions
from gateway_project.api.viewsets import NAME_IN_URL, actor_of

VIEW, CHANGE = ["breakers.view_breaker"], ["breakers.view_breaker", "breakers.change_breaker"]


class TransitionSerializer(serializers.Serializer):
    """The last transition, with the field names `manage.py breakers --json` writes ('from' is a keyword)."""

    def get_fields(self):
        return {
            "at": serializers.DateTimeField(),
            "from": serializers.CharField(),
            "to": serializers.CharField(),
            "reason": serializers.CharField(allow_blank=True),
            "actor": serializers.CharField(allow_blank=True),
        }


class BreakerSerializer(serializers.Serializer):
    upstream = serializers.CharField()
    mode = serializers.ChoiceField(choices=[str(m) for m in MODES])
    state = serializers.CharField(help_text="closed, open, half_open; 'unknown' when Redis did not answer.")
    consecutive_failures = serializers.IntegerField()
    window_calls = serializers.IntegerField()
    window_failures = serializers.IntegerField()
    next_probe_in_seconds = serializers.FloatField(allow_null=True)
    last_transition = TransitionSerializer(allow_null=True)
    error = serializers.CharField(allow_null=True, help_text="Why the state is unknown.")
    held_open = serializers.BooleanField(help_text="Its mode is forced_open: it rejects whatever its state.")


class ModeSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=[str(m) for m in MODES])


def _answer(name: str) -> dict:
    (status,) = services.live_states(names=[name])
    return {**status.as_dict(), "held_open": status.mode == "forced_open"}


class BreakerViewSet(viewsets.ViewSet):
    """Each upstream's circuit breaker: its live state (from Redis), reset, and the operator's modes."""

    lookup_field = "upstream"
    lookup_value_regex = NAME_IN_URL
    permission_classes = [OperatorModelPermissions]
    action_permissions = {"list": VIEW, "retrieve": VIEW, "reset": CHANGE, "mode": CHANGE}

    def _known(self, name: str) -> str:
        if name not in services.upstream_names():
            raise NotFound(f"No upstream named {name!r}.")
        return name

    @extend_schema(responses={200: BreakerSerializer(many=True)})
    def list(self, request):
        return Response([_answer(status.upstream) for status in services.live_states()])

    @extend_schema(responses={200: BreakerSerializer})
    def retrieve(self, request, upstream=None):
        return Response(_answer(self._known(upstream)))

    @extend_schema(summary="Close the breaker and clear its counts", request=None, responses={200: BreakerSerializer})
    @action(detail=True, methods=["post"])
    def reset(self, request, upstream=None):
        services.reset_breakers(names=[self._known(upstream)], actor=actor_of(request))
        return Response(_answer(upstream))

    @extend_schema(
        summary="Set the operator mode (normal, forced_open, disabled, shadow)",
        request=ModeSerializer,
        responses={200: BreakerSerializer},
    )
    @action(detail=True, methods=["post"])
    def mode(self, request, upstream=None):
        params = ModeSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        services.set_mode(names=[self._known(upstream)], mode=params.validated_data["mode"], actor=actor_of(request))
        return Response(_answer(upstream))
