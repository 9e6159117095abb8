from django.apps import AppConfig


class LimitsConfig(AppConfig):
    name = "limits"
    verbose_name = "Consumers and rate limits"

    def ready(self) -> None:
        from limits import compiled, configfile, services
        from limits.models import ApiKey, Consumer, RateLimitPolicy
        from proxy import configfile as proxy_configfile
        from proxy import runtime
        from proxy import services as proxy_services

        runtime.register(
            "limits", compiled.load, empty=compiled.LimitsConfig(), models=(Consumer, ApiKey, RateLimitPolicy)
        )
        proxy_configfile.register(configfile.ConsumerSection())
        proxy_configfile.register(configfile.RateLimitSection())
        if services.ensure_demo_policy not in proxy_services.demo_hooks:
            proxy_services.demo_hooks.append(services.ensure_demo_policy)
