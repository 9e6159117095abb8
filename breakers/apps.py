from django.apps import AppConfig


class BreakersConfig(AppConfig):
    name = "breakers"
    verbose_name = "Circuit breakers"

    def ready(self) -> None:
        from breakers import api, compiled, gate, metrics, services
        from breakers.admin import BreakerConfigInline
        from breakers.configfile import BreakerFields
        from breakers.models import BreakerConfig
        from gateway_project import configfile, registry, runtime

        runtime.register("breakers", compiled.load, empty=compiled.BreakerBook(), models=(BreakerConfig,))
        configfile.extend("upstreams", BreakerFields())
        registry.add(registry.upstream_admin_inlines, BreakerConfigInline)
        registry.add(gate.listeners, metrics.on_event)
        registry.add(registry.api_viewsets, ("breakers", api.BreakerViewSet))
        registry.add(registry.breaker_status_providers, services.status_rows)
        registry.add(registry.route_page_providers, services.route_page_lines)
