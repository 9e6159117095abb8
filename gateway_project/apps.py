from django.apps import AppConfig


class GatewayConfig(AppConfig):
    """The core every app plugs into: configuration snapshot and revision, file format, client identity,
    per-request context, Redis clients, access log and metrics. It never imports an app; apps register with
    it in their `ready()`."""

    name = "gateway_project"
    label = "gateway"
    verbose_name = "Gateway"
