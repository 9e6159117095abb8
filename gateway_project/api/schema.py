"""The OpenAPI schema (drf-spectacular), with what every operation shares written down once: the error body
for 400/401/403/404 (and 409/412 where objects change), and If-Match on the changes that take it."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter

from gateway_project.api.serializers import ErrorSerializer

_ERRORS = {
    "400": "Invalid request: see `fields` for each refused value.",
    "401": "No valid credentials: send a bearer token or log in to the admin.",
    "403": "This user lacks the permission (or the client is outside the admin networks).",
    "404": "No such object.",
}
_CHANGE_ERRORS = {
    "409": "The object is still used by others, or a simultaneous change conflicted.",
    "412": "If-Match did not match: the object changed since it was read.",
}
IF_MATCH = OpenApiParameter(
    "If-Match",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="The ETag from the last read: the change is refused with 412 if the object changed since.",
)


class GatewayAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        errors = dict(_ERRORS)
        if self.method in ("PUT", "PATCH", "DELETE", "POST"):
            errors.update(_CHANGE_ERRORS)
        for code, description in errors.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                responses[code]["description"] = description
        return responses

    def get_override_parameters(self):
        parameters = list(super().get_override_parameters())
        if self.method in ("PUT", "PATCH", "DELETE") and getattr(self.view, "etags", False):
            parameters.append(IF_MATCH)
        return parameters


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "gateway_project.api.authentication.BearerTokenAuthentication"
    name = "bearer"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A staff user's API token (`manage.py api_token create USER`, or API tokens in the admin).",
        }
