"""Every error of the API as one JSON shape, the gateway's own: {error, message, fields, request_id}.

`fields` maps each field path to its messages ('retry_on_statuses[1]', 'breaker.mode'), so a script can tell
which value was refused; validation by the model (normalize(), clean()) arrives here as Django's
ValidationError and is reported the same way.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from redis.exceptions import RedisError
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from gateway_project.changes import Conflict

NON_FIELD = ("non_field_errors", "__all__")


def flatten(detail, path: str = "") -> list[tuple[str, str]]:
    """(field path, message) for every message in a DRF error detail."""
    if isinstance(detail, dict):
        found = []
        for key, value in detail.items():
            if isinstance(key, int):  # a list field's item: DRF reports it by index
                found.extend(flatten(value, f"{path}[{key}]"))
                continue
            key = "" if key in NON_FIELD else str(key)
            found.extend(flatten(value, f"{path}.{key}" if path and key else path or key))
        return found
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [(path, str(item)) for item in detail]
        found = []
        for index, item in enumerate(detail):
            found.extend(flatten(item, f"{path}[{index}]"))
        return found
    return [(path, str(detail))]


def body(request, code: str, message: str, fields: dict | None = None) -> dict:
    context = getattr(getattr(request, "_request", request), "gateway", None)
    found = {"error": code, "message": message}
    if fields:
        found["fields"] = fields
    found["request_id"] = context.id if context is not None else None
    return found


def handle(exc, context):
    request = context["request"]
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(serializers.as_serializer_error(exc))
    if isinstance(exc, Conflict):
        return Response(body(request, "precondition_failed", str(exc)), status=status.HTTP_412_PRECONDITION_FAILED)
    if isinstance(exc, ProtectedError):
        users = sorted({str(obj) for obj in exc.protected_objects})
        message = f"Still in use by {', '.join(users)}: change or delete those first."
        return Response(body(request, "in_use", message), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, IntegrityError):
        message = "The change conflicts with another made at the same time; read again and retry."
        return Response(body(request, "conflict", message), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, RedisError):
        message = f"Redis is unavailable ({type(exc).__name__}); nothing was changed."
        return Response(body(request, "redis_unavailable", message), status=status.HTTP_503_SERVICE_UNAVAILABLE)
    response = exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's handler500 answers with the gateway's JSON error
    if isinstance(exc, exceptions.ValidationError):
        fields: dict[str, list[str]] = {}
        for path, message in flatten(exc.detail):
            fields.setdefault(path, []).append(message)
        general = fields.pop("", [])
        message = " ".join(general) or "Some values were refused; see fields."
        response.data = body(request, "invalid", message, fields)
    else:
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        message = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        response.data = body(request, code if isinstance(code, str) else "error", str(message))
    return response
