"""JSON error responses: every error the gateway itself produces looks the same and carries the request ID."""

from __future__ import annotations

import json

from django.http import HttpResponse


def json_error(request, status: int, error: str, message: str, **extra) -> HttpResponse:
    body = {
        "error": error,
        "message": message,
        **extra,
        "request_id": request.gateway.id if hasattr(request, "gateway") else None,
    }
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response.gateway_error = error  # counted as the gateway's own answer (metrics.own_errors)
    return response
