from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Routes and upstreams"

    def ready(self) -> None:
        from gateway_project import configfile, runtime
        from proxy import configfile as sections
        from proxy.models import Route, Upstream
        from proxy.routing import RouteTable, load_route_table

        runtime.register("routes", load_route_table, empty=RouteTable(), models=(Upstream, Route))
        configfile.register(sections.UpstreamSection())
        configfile.register(sections.RouteSection())
