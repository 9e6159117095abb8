"""The base of every app's configuration endpoints: objects by name, ETags, saves and deletes through services."""

from __future__ import annotations

from rest_framework import viewsets

from gateway_project import changes
from gateway_project.api.permissions import OperatorModelPermissions
from gateway_project.audit import API, Actor
from gateway_project.validation import NAME_RE

#: An object's name in a URL, as gateway_project.validation.validate_name allows it.
NAME_IN_URL = NAME_RE.pattern.removeprefix("^").removesuffix("$")


def actor_of(request) -> Actor:
    return Actor.of_request(request, API)


def if_match(request) -> str | None:
    """The ETag a client sent in If-Match, without quotes or a weak marker; None if it sent none."""
    value = request.headers.get("If-Match")
    if value is None:
        return None
    return value.strip().removeprefix("W/").strip('"')


class ServiceViewSet(viewsets.ModelViewSet):
    """List, read, create, change and delete objects of one model, each change through the app's service.

    Subclasses set `queryset`, `serializer_class`, `save_service` and `delete_service` (keyword-only functions
    taking the object under `service_arg` and `actor`, `if_match`). Reads answer with the object's ETag; a
    change or delete carrying If-Match is refused with 412 when the object changed meanwhile.
    """

    lookup_field = "name"
    lookup_value_regex = NAME_IN_URL
    permission_classes = [OperatorModelPermissions]
    save_service = None
    delete_service = None
    service_arg: str = ""
    etags = True

    def _service_call(self, service, obj) -> None:
        service(**{self.service_arg: obj, "actor": actor_of(self.request), "if_match": if_match(self.request)})

    def save_object(self, obj) -> None:
        self._service_call(type(self).save_service, obj)

    def perform_destroy(self, instance) -> None:
        self._service_call(type(self).delete_service, instance)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.action in ("retrieve", "update", "partial_update", "create") and response.status_code < 300:
            obj = self.get_queryset().filter(**{self.lookup_field: response.data.get(self.lookup_field)}).first()
            if obj is not None:
                response["ETag"] = f'"{changes.etag(obj)}"'
        return response
