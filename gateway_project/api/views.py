"""The core's endpoints: the audit trail, the whole configuration (export, import with dry run), this instance."""

from __future__ import annotations

import os
import re
import socket

from django.conf import settings
from django.db import models
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, viewsets
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project import configfile, runtime
from gateway_project.api.permissions import IsOperator, OperatorModelPermissions
from gateway_project.api.viewsets import actor_of
from gateway_project.models import AuditEntry
from gateway_project.redis_url import is_embedded, redacted
from gateway_project.views import readiness

# --- The audit trail --------------------------------------------------------------------------------------


class AuditEntrySerializer(serializers.ModelSerializer):
    changes = serializers.DictField(
        child=serializers.ListField(min_length=2, max_length=2, child=serializers.JSONField(allow_null=True)),
        help_text="Each changed field, in the configuration file's terms: [old, new].",
    )

    class Meta:
        model = AuditEntry
        fields = ("id", "at", "actor", "via", "address", "action", "object_type", "object_name", "changes", "note")


class AuditPagination(LimitOffsetPagination):
    default_limit = 100
    max_limit = 1000


_AUDIT_FILTERS = [
    OpenApiParameter("object_type", str, description="upstream, route, consumer, rate_limit, api_key, breaker, ..."),
    OpenApiParameter("object_name", str, description="The object's name (an API key's or token's prefix)."),
    OpenApiParameter("actor", str, description="Entries whose actor starts with this: 'user:alice', 'cli:', ..."),
    OpenApiParameter("action", str, description="create, update, delete, revoke, reset, clear_counter, ..."),
]


@extend_schema(parameters=_AUDIT_FILTERS)
class AuditViewSet(viewsets.ReadOnlyModelViewSet):
    """Every change to configuration or live state, newest first: who, via what, from where, old -> new."""

    queryset = AuditEntry.objects.all()
    serializer_class = AuditEntrySerializer
    permission_classes = [OperatorModelPermissions]
    pagination_class = AuditPagination

    def get_queryset(self):
        entries = super().get_queryset()
        params = self.request.query_params
        for name in ("object_type", "object_name", "action"):
            if params.get(name):
                entries = entries.filter(**{name: params[name]})
        if params.get("actor"):
            entries = entries.filter(actor__startswith=params["actor"])
        return entries


# --- The whole configuration --------------------------------------------------------------------------------


def _section_models() -> list[type[models.Model]]:
    return [section.model for section in configfile.sections()]


def _require(request, verbs: tuple[str, ...]) -> None:
    needed = [f"{m._meta.app_label}.{verb}_{m._meta.model_name}" for m in _section_models() for verb in verbs]
    if not request.user.has_perms(needed):
        raise exceptions.PermissionDenied(
            f"This needs the permissions to {' and '.join(verbs)} every section's objects."
        )


class ImportRequestSerializer(serializers.Serializer):
    document = serializers.DictField(help_text="The configuration document (docs/configuration.md), as JSON.")
    prune = serializers.BooleanField(default=False, help_text="Delete objects missing from a section that is present.")
    dry_run = serializers.BooleanField(default=False, help_text="Only say what would change.")


class ChangeSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["create", "update", "delete"])
    object_type = serializers.CharField()
    name = serializers.CharField()
    changes = serializers.DictField(
        child=serializers.ListField(min_length=2, max_length=2, child=serializers.JSONField(allow_null=True)),
        help_text="Each field that changes, in the document's terms (breaker.mode): [old, new].",
    )


class ImportResultSerializer(serializers.Serializer):
    applied = serializers.BooleanField(help_text="Whether the changes were written (false for a dry run).")
    changes = ChangeSerializer(many=True)


_WHERE_NAME = re.compile(r" \([^)]*\)")


class ConfigExportView(APIView):
    permission_classes = [IsOperator]

    @extend_schema(
        summary="Export the whole configuration",
        responses={200: OpenApiTypes.OBJECT},
        description="The document `gateway_export` writes (docs/configuration.md), as JSON.",
    )
    def get(self, request):
        _require(request, ("view",))
        return Response(configfile.export_document())


class ConfigImportView(APIView):
    permission_classes = [IsOperator]

    @extend_schema(
        summary="Import a configuration document (dry run: only the diff)",
        request=ImportRequestSerializer,
        responses={200: ImportResultSerializer},
        description="Validates the whole document first and applies it in one transaction, as `gateway_import` "
        "does; every change is recorded in the audit trail. Problems come back as `fields`, by their place in "
        "the request (document.routes[3].path_prefix).",
    )
    def post(self, request):
        _require(request, ("add", "change", "delete"))
        params = ImportRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            plan = configfile.import_document(
                params.validated_data["document"],
                actor=actor_of(request),
                prune=params.validated_data["prune"],
                dry_run=params.validated_data["dry_run"],
            )
        except configfile.ConfigError as exc:
            fields: dict[str, list[str]] = {}
            for problem in exc.problems:
                where, _, message = problem.partition(": ")
                fields.setdefault("document." + _WHERE_NAME.sub("", where), []).append(message)
            raise exceptions.ValidationError(fields) from exc
        applied = bool(plan.changes) and not params.validated_data["dry_run"]
        return Response({"applied": applied, "changes": [change.as_dict() for change in plan.changes]})


# --- This instance ----------------------------------------------------------------------------------------


class StatusSerializer(serializers.Serializer):
    instance = serializers.CharField(help_text="Host name of the machine this answer came from.")
    pid = serializers.IntegerField(help_text="The gateway worker process that answered.")
    ready = serializers.BooleanField(help_text="What /readyz says: database, Redis and configuration.")
    checks = serializers.DictField(child=serializers.CharField())
    revision = serializers.IntegerField(help_text="The configuration revision this worker serves.")
    redis = serializers.CharField(help_text="'embedded' (in this process), or the Redis URL without its password.")
    workers_share_state = serializers.BooleanField(help_text="False with the embedded store: one process only.")


class StatusView(APIView):
    permission_classes = [IsOperator]

    @extend_schema(summary="This instance's status", responses={200: StatusSerializer})
    def get(self, request):
        checks = readiness()
        url = settings.GATEWAY_REDIS_URL
        return Response(
            {
                "instance": socket.gethostname(),
                "pid": os.getpid(),
                "ready": all(not value.startswith("error") for value in checks.values()),
                "checks": checks,
                "revision": runtime.current().revision,
                "redis": "embedded" if is_embedded(url) else redacted(url),
                "workers_share_state": not is_embedded(url),
            }
        )
