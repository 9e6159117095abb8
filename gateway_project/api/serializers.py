"""What every app's API serializers share: the error body, list fields over comma-separated columns, and a
ModelSerializer that saves through the app's service function instead of Model.objects.create."""

from __future__ import annotations

from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="A code: invalid, not_found, permission_denied, precondition_failed, ...")
    message = serializers.CharField()
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="For invalid requests: the messages of each refused field, by its path (breaker.mode).",
    )
    request_id = serializers.CharField(allow_null=True)


class CommaListField(serializers.ListField):
    """A list in the API and in the configuration file, stored as comma-separated text (a route's methods)."""

    child = serializers.CharField(max_length=20)

    def to_representation(self, value: str) -> list[str]:
        return [item for item in value.split(",") if item]

    def to_internal_value(self, data) -> str:
        return ",".join(super().to_internal_value(data))


class StatusListField(serializers.ListField):
    """HTTP status codes (400-599 unless told otherwise) as a list of integers, stored as comma-separated text."""

    def __init__(self, *, low: int = 400, high: int = 599, **kwargs) -> None:
        super().__init__(child=serializers.IntegerField(min_value=low, max_value=high), **kwargs)

    def to_representation(self, value: str) -> list[int]:
        return sorted(int(status) for status in value.split(",") if status)

    def to_internal_value(self, data) -> str:
        return ",".join(str(status) for status in super().to_internal_value(data))


class ServiceModelSerializer(serializers.ModelSerializer):
    """Creates and updates through the viewset's `save_object()`, which calls the app's service function (the
    model's full validation, the caller's If-Match, the audit entry)."""

    def create(self, validated_data):
        return self._save(self.Meta.model(), validated_data)

    def update(self, instance, validated_data):
        return self._save(instance, validated_data)

    def _save(self, obj, validated_data):
        for name, value in validated_data.items():
            setattr(obj, name, value)
        self.context["view"].save_object(obj)
        return obj
