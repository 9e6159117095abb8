from django.apps import AppConfig


class LimitsConfig(AppConfig):
    name = "limits"
    verbose_name = "Consumers and rate limits"

    def ready(self) -> None:
        from gateway_project import configfile, registry, runtime
        from limits import api, compiled, limiter, metrics, services
        from limits import configfile as sections
        from limits.models import ApiKey, Consumer, RateLimitPolicy

        runtime.register(
            "limits", compiled.load, empty=compiled.LimitsConfig(), models=(Consumer, ApiKey, RateLimitPolicy)
        )
        configfile.register(sections.ConsumerSection())
        configfile.register(sections.RateLimitSection())
        registry.add(registry.demo_hooks, services.ensure_demo_policy)
        registry.add(limiter.listeners, metrics.on_outcome)
        registry.add(registry.api_viewsets, ("consumers", api.ConsumerViewSet))
        registry.add(registry.api_viewsets, ("api-keys", api.ApiKeyViewSet))
        registry.add(registry.api_viewsets, ("rate-limit-policies", api.PolicyViewSet))
        registry.add(registry.limited_client_providers, services.busiest_clients)
        registry.add(registry.route_page_providers, services.route_page_lines)
