from django.conf import settings
from django.http import HttpResponse
from django.urls import re_path
from revproxy.views import ProxyView

BODY = b'{"status":"ok","service":"bench","message":"hello from the benchmark upstream","padding":"xxxxxxxx"}'


def hello(request):
    return HttpResponse(BODY, content_type="application/json")


urlpatterns = [
    re_path(r"^hello$", hello),
    re_path(r"^proxy/(?P<path>.*)$", ProxyView.as_view(upstream=settings.UPSTREAM)),
]
