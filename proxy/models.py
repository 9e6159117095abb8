from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from gateway_project.validation import normalize_statuses, validate_name
from proxy import validation

ROUND_ROBIN, LEAST_REQUESTS = "round_robin", "least_requests"
BALANCING_CHOICES = (
    (ROUND_ROBIN, "weighted round robin (smooth, as nginx)"),
    (LEAST_REQUESTS, "least outstanding requests, power of two choices"),
)


class Upstream(models.Model):
    """A service behind the gateway: where requests go and how hard the gateway tries."""

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[validate_name],
        help_text="Unique; used in logs, metrics and breaker state. Letters, digits, '.', '_' and '-'.",
    )
    base_url = models.CharField(
        "base URL",
        max_length=500,
        help_text="http:// or https:// URL, optionally with a base path, e.g. http://orders.internal:8080/v1. "
        "No credentials, query string or fragment.",
    )
    connect_timeout = models.FloatField(
        default=2.0,
        validators=[MinValueValidator(0.001), MaxValueValidator(300)],
        help_text="Seconds to wait for a TCP (and TLS) connection to the upstream.",
    )
    read_timeout = models.FloatField(
        default=30.0,
        validators=[MinValueValidator(0.001), MaxValueValidator(3600)],
        help_text="Seconds to wait for the upstream between bytes of its response.",
    )
    deadline = models.FloatField(
        default=60.0,
        validators=[MinValueValidator(0.001), MaxValueValidator(3600)],
        help_text="Total seconds, across all attempts and backoff, until the upstream's response headers arrive. "
        "Retries never run past it.",
    )
    max_retries = models.PositiveSmallIntegerField(
        default=2,
        validators=[MaxValueValidator(10)],
        help_text="Retries after the first attempt. Only idempotent methods are retried once a request may have "
        "reached the upstream; a refused connection is retried for any method.",
    )
    backoff_factor = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0), MaxValueValidator(60)],
        help_text="urllib3 exponential backoff: the n-th retry after the first waits factor * 2^(n-1) seconds.",
    )
    backoff_max = models.FloatField(
        default=2.0,
        validators=[MinValueValidator(0), MaxValueValidator(300)],
        help_text="Upper bound of one backoff wait, in seconds.",
    )
    backoff_jitter = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0), MaxValueValidator(60)],
        help_text="Random seconds (0 to this value) added to each backoff wait.",
    )
    retry_on_statuses = models.CharField(
        "retry on statuses",
        max_length=200,
        default="502,503,504",
        blank=True,
        help_text="Comma-separated upstream status codes that are retried (idempotent methods only).",
    )
    tls_verify = models.BooleanField(
        "verify TLS",
        default=True,
        help_text="Verify the upstream's certificate for https:// base URLs.",
    )
    enabled = models.BooleanField(default=True, help_text="A disabled upstream answers 503 on every route to it.")

    balancing = models.CharField(
        max_length=20,
        choices=BALANCING_CHOICES,
        default=ROUND_ROBIN,
        help_text="How requests are spread over the targets: by weight in turn, or to the less busy of two targets "
        "drawn at random (busy: requests it has not finished, per unit of weight).",
    )
    # Passive health (Envoy's outlier detection), per worker: see proxy/health.py.
    eject_consecutive_failures = models.PositiveSmallIntegerField(
        "eject after consecutive failures",
        default=5,
        validators=[MaxValueValidator(1000)],
        help_text="A target whose attempts fail this many times in a row (connect error, timeout, an ejecting "
        "status) is taken out of the rotation for a while. 0: never.",
    )
    eject_seconds = models.FloatField(
        "ejection time",
        default=30.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="Seconds of a first ejection; each repeated ejection lasts this much longer.",
    )
    eject_max_seconds = models.FloatField(
        "longest ejection",
        default=300.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(86400)],
        help_text="Upper bound of one ejection, seconds.",
    )
    eject_max_percent = models.PositiveSmallIntegerField(
        "most targets ejected",
        default=10,
        validators=[MaxValueValidator(100)],
        help_text="Percent of the targets that may be ejected at once; one target always may be.",
    )
    eject_on_statuses = models.CharField(
        "ejecting statuses",
        max_length=200,
        default="502,503,504",
        blank=True,
        help_text="Comma-separated upstream status codes that count as a target's failure.",
    )
    # Active health checks, run by one worker per gateway instance: see proxy/health.py.
    health_check_path = models.CharField(
        max_length=300,
        blank=True,
        default="",
        help_text="Path (below the base path) each target is asked with GET every interval, off the request path. "
        "Empty: no active checks.",
    )
    health_check_interval = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(3600)], help_text="Seconds between checks."
    )
    health_check_timeout = models.FloatField(
        default=2.0, validators=[MinValueValidator(0.01), MaxValueValidator(60)], help_text="Seconds a check may take."
    )
    health_check_statuses = models.CharField(
        "healthy statuses",
        max_length=200,
        default="200",
        help_text="Comma-separated statuses a healthy target answers a check with.",
    )
    healthy_threshold = models.PositiveSmallIntegerField(
        default=2,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Checks in a row that must pass before an unhealthy target gets traffic again.",
    )
    unhealthy_threshold = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Checks in a row that must fail before a target gets no more traffic.",
    )
    retry_budget_percent = models.PositiveSmallIntegerField(
        "retry budget (percent)",
        default=20,
        validators=[MaxValueValidator(100)],
        help_text="Retries may be at most this share of the upstream's requests in the last 10 seconds (per worker), "
        "so retries cannot multiply an outage.",
    )
    retry_budget_min = models.PositiveSmallIntegerField(
        "retry budget minimum",
        default=3,
        validators=[MaxValueValidator(10000)],
        help_text="Retries allowed in any 10 seconds whatever the share (per worker).",
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.normalize()

    def normalize(self) -> None:
        """Validate and canonicalize the fields with rules beyond their type; raise ValidationError."""
        errors = {}
        try:
            self.base_url = validation.normalize_base_url(self.base_url)
        except ValidationError as exc:
            errors["base_url"] = exc
        for field in ("retry_on_statuses", "eject_on_statuses"):
            try:
                setattr(self, field, normalize_statuses(getattr(self, field)))
            except ValidationError as exc:
                errors[field] = exc
        for field, normalize in (
            ("health_check_statuses", validation.normalize_healthy_statuses),
            ("health_check_path", validation.normalize_check_path),
        ):
            try:
                setattr(self, field, normalize(getattr(self, field)))
            except ValidationError as exc:
                errors[field] = exc
        if errors:
            raise ValidationError(errors)


class Target(models.Model):
    """One server of an upstream. The upstream's base URL keeps the scheme, the base path and the Host header
    (as nginx's `proxy_pass http://name` sends `Host: name`); a target is where the connection goes. An upstream
    without targets sends to its base URL's own host and port."""

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="targets")
    address = models.CharField(
        max_length=300,
        help_text="host:port of one server, e.g. 10.0.0.5:8080 or [2001:db8::5]:8080. It names the target in logs "
        "and metrics.",
    )
    weight = models.PositiveIntegerField(
        default=100,
        validators=[MinValueValidator(1), MaxValueValidator(10000)],
        help_text="Share of the traffic relative to the other targets' weights.",
    )
    enabled = models.BooleanField(default=True, help_text="A disabled target gets no requests.")

    class Meta:
        ordering = ["upstream", "address"]
        constraints = [models.UniqueConstraint(fields=["upstream", "address"], name="target_unique_address")]

    def __str__(self) -> str:
        return self.address

    def clean(self) -> None:
        self.normalize()

    def normalize(self) -> None:
        try:
            self.address = validation.normalize_address(self.address)
        except ValidationError as exc:
            raise ValidationError({"address": exc}) from exc


class Route(models.Model):
    """A path prefix (and optionally a host) that the gateway forwards to an upstream."""

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[validate_name],
        help_text="Unique; used in logs and metrics.",
    )
    path_prefix = models.CharField(
        max_length=300,
        help_text="Requests whose path is this prefix or lies below it match, segment by segment: /api matches "
        "/api and /api/users but not /apis. The longest matching prefix wins.",
    )
    host = models.CharField(
        max_length=253,
        blank=True,
        default="",
        help_text="Match only this Host (api.example.com, or *.example.com for any subdomain). Empty: any host. "
        "A route with a matching host is preferred over one without.",
    )
    methods = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="Comma-separated methods this route accepts (GET implies HEAD); empty accepts all. Another "
        "method on this prefix answers 405.",
    )
    strip_prefix = models.BooleanField(
        default=True,
        help_text="Remove the path prefix before forwarding: /api/users on prefix /api goes upstream as "
        "<base path>/users.",
    )
    upstream = models.ForeignKey(Upstream, on_delete=models.PROTECT, related_name="routes")
    max_body_bytes = models.PositiveBigIntegerField(
        "max body bytes",
        null=True,
        blank=True,
        help_text="Largest request body accepted, in bytes; larger requests get 413 before the upstream is "
        "contacted. Empty: the gateway default (GATEWAY_MAX_BODY_BYTES). 0: no limit.",
    )
    require_api_key = models.BooleanField(
        "require an API key",
        default=False,
        help_text="Only clients presenting a valid, unrevoked consumer API key (header GATEWAY_API_KEY_HEADER, "
        "default X-API-Key) get through; others get 401 and the upstream sees nothing.",
    )
    forward_api_key = models.BooleanField(
        "forward the API key",
        default=False,
        help_text="Pass the client's API key header on to the upstream. Off: the upstream never sees it (it is "
        "told the consumer's name in X-Consumer-Name instead).",
    )
    retry_idempotency_key = models.BooleanField(
        "retry with Idempotency-Key",
        default=False,
        help_text="Retry a POST or PATCH that carries an Idempotency-Key header as an idempotent request. Never "
        "without the header.",
    )
    deadline_header = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="Send the milliseconds left to the upstream's deadline in this header (e.g. X-Request-Timeout-Ms), "
        "so the upstream can give up in time. A client's own value in it can only shorten the deadline; a "
        "request whose deadline is spent is not sent. Empty: off.",
    )
    upgrade_protocols = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="Comma-separated protocols a client may switch to with Upgrade, e.g. websocket; the upstream's "
        "101 is relayed and bytes flow both ways until either side closes. Empty: no upgrades (the Upgrade header "
        "is not forwarded).",
    )
    description = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["path_prefix", "host", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def method_set(self) -> frozenset[str] | None:
        """The methods this route accepts, HEAD included with GET; None for all."""
        if not self.methods:
            return None
        methods = set(self.methods.split(","))
        if "GET" in methods:
            methods.add("HEAD")
        return frozenset(methods)

    def clean(self) -> None:
        self.normalize()
        if self.enabled:
            conflict = self.find_conflict(Route.objects.filter(enabled=True).exclude(pk=self.pk))
            if conflict is not None:
                raise ValidationError(self.conflict_message(conflict))

    def normalize(self) -> None:
        """Validate and canonicalize prefix, host and methods; raise ValidationError."""
        errors = {}
        for field, normalize in (
            ("path_prefix", lambda v: validation.normalize_prefix(v, settings.GATEWAY_RESERVED_PREFIXES)),
            ("host", validation.normalize_host),
            ("methods", validation.normalize_methods),
            ("deadline_header", validation.normalize_header_name),
            ("upgrade_protocols", validation.normalize_upgrade_protocols),
        ):
            try:
                setattr(self, field, normalize(getattr(self, field)))
            except ValidationError as exc:
                errors[field] = exc
        if errors:
            raise ValidationError(errors)

    def conflict_message(self, other: Route) -> str:
        return (
            f"Route {other.name!r} already matches the same requests (prefix {other.path_prefix}, host "
            f"{other.host or 'any'}, methods {other.methods or 'all'}). Change the prefix, host or methods, or "
            "disable one of them."
        )

    def find_conflict(self, others) -> Route | None:
        """The first of `others` that would match exactly the requests this route matches, at the same rank."""
        mine = self.method_set
        for other in others:
            if other.path_prefix != self.path_prefix or other.host != self.host:
                continue
            theirs = other.method_set
            if mine is None or theirs is None or mine & theirs:
                return other
        return None
