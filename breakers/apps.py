from django.apps import AppConfig


class BreakersConfig(AppConfig):
    name = "breakers"
    verbose_name = "Circuit breakers"

    def ready(self) -> None:
        from breakers import metrics, service
        from gateway_project import registry

        registry.add(service.listeners, metrics.on_event)
