from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Routes and upstreams"

    def ready(self) -> None:
        from gateway_project import configfile, registry, runtime
        from proxy import api
        from proxy import configfile as sections
        from proxy.models import Route, Upstream
        from proxy.routing import RouteTable, load_route_table

        runtime.register("routes", load_route_table, empty=RouteTable(), models=(Upstream, Route))
        configfile.register(sections.UpstreamSection())
        configfile.register(sections.RouteSection())
        registry.add(registry.api_viewsets, ("upstreams", api.UpstreamViewSet))
        registry.add(registry.api_viewsets, ("routes", api.RouteViewSet))
