from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from gateway_project.validation import validate_name

#: An exact sliding log holds one entry per allowed request in the window; past this, use GCRA.
MAX_LOG_LIMIT = 10_000


class Consumer(models.Model):
    """A client of the gateway, known by its API keys."""

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[validate_name],
        help_text="Unique. Sent upstream in X-Consumer-Name and used to count per-consumer limits.",
    )
    enabled = models.BooleanField(default=True, help_text="A disabled consumer's keys are refused (401).")
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def normalize(self) -> None:
        """Nothing beyond field validation; present for configuration import."""


class ApiKey(models.Model):
    """One API key of a consumer. Only its SHA-256 is stored; the key itself is shown once, when created."""

    consumer = models.ForeignKey(Consumer, on_delete=models.CASCADE, related_name="api_keys")
    label = models.CharField(max_length=100, blank=True, default="", help_text="What this key is for.")
    prefix = models.CharField(max_length=12, editable=False, help_text="The key's first characters, to recognize it.")
    key_hash = models.CharField("SHA-256 of the key", max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["consumer__name", "created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.consumer.name})"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class RateLimitPolicy(models.Model):
    class Scope(models.TextChoices):
        GLOBAL = "global", "every route"
        ROUTE = "route", "one route"
        CONSUMER = "consumer", "one consumer"

    class KeyBy(models.TextChoices):
        IP = "ip", "client IP address"
        CONSUMER = "consumer", "consumer (client IP when anonymous)"
        HEADER = "header", "a request header's value (client IP when absent)"
        ROUTE = "route", "the route as a whole"

    class Algorithm(models.TextChoices):
        SLIDING_LOG = "sliding_log", "exact sliding window"
        GCRA = "gcra", "GCRA (constant memory)"

    class Mode(models.TextChoices):
        ENFORCE = "enforce", "enforce"
        SHADOW = "shadow", "shadow: count and report, never reject"

    class OnRedisFailure(models.TextChoices):
        ALLOW = "allow", "allow the request"
        DENY = "deny", "deny the request (503)"
        LOCAL = "local", "apply the limit per worker, in memory"

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[validate_name],
        help_text="Unique; named in 429 answers, the RateLimit headers, logs and metrics.",
    )
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.GLOBAL)
    route = models.ForeignKey(
        "proxy.Route",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="rate_limits",
        help_text="For the 'one route' scope.",
    )
    consumer = models.ForeignKey(
        Consumer,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="rate_limits",
        help_text="For the 'one consumer' scope.",
    )
    key_by = models.CharField(
        "count by",
        max_length=10,
        choices=KeyBy.choices,
        default=KeyBy.IP,
        help_text="Each distinct value gets its own counter. IPv6 clients are counted per /64 "
        "(GATEWAY_RATELIMIT_IPV6_PREFIX).",
    )
    header_name = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="For counting by a header: its name, e.g. X-Tenant. Values are hashed before use.",
    )
    limit = models.PositiveIntegerField(validators=[MinValueValidator(1)], help_text="Requests allowed per window.")
    window_seconds = models.PositiveIntegerField(
        "window (seconds)", validators=[MinValueValidator(1), MaxValueValidator(30 * 24 * 3600)]
    )
    algorithm = models.CharField(
        max_length=12,
        choices=Algorithm.choices,
        default=Algorithm.SLIDING_LOG,
        help_text="Exact sliding window: a request is allowed if fewer than `limit` were allowed in the last "
        "`window` seconds; Redis keeps one entry per allowed request (memory and time grow with the limit, so "
        f"it is capped at {MAX_LOG_LIMIT}). GCRA: a steady rate of limit/window with bursts up to `burst`; one "
        "small key per client whatever the limit. Choose GCRA for large limits.",
    )
    burst = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="GCRA only: requests allowed at once after a quiet period. Empty: the limit.",
    )
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ENFORCE)
    on_redis_failure = models.CharField(
        "when Redis is unavailable",
        max_length=10,
        choices=OnRedisFailure.choices,
        default=OnRedisFailure.ALLOW,
        help_text="Applied, logged and counted each time Redis cannot answer within its timeout. 'Per worker' "
        "counts in each worker's memory, so the whole fleet allows up to workers x limit.",
    )
    legacy_headers = models.BooleanField(
        "legacy X-RateLimit headers",
        default=False,
        help_text="Also send X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset (epoch seconds).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "rate limit policy"
        verbose_name_plural = "rate limit policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        self.normalize()

    def normalize(self) -> None:
        errors = {}
        has_route, has_consumer = self.route is not None, self.consumer is not None
        if self.scope == self.Scope.ROUTE and not has_route:
            errors["route"] = "Choose the route this policy applies to."
        if self.scope == self.Scope.CONSUMER and not has_consumer:
            errors["consumer"] = "Choose the consumer this policy applies to."
        if self.scope != self.Scope.ROUTE and has_route:
            errors["route"] = "Only a policy scoped to one route names a route."
        if self.scope != self.Scope.CONSUMER and has_consumer:
            errors["consumer"] = "Only a policy scoped to one consumer names a consumer."
        self.header_name = (self.header_name or "").strip()
        if self.key_by == self.KeyBy.HEADER:
            if not self.header_name or not self.header_name.replace("-", "").isalnum():
                errors["header_name"] = "Name the header to count by (letters, digits and '-')."
        elif self.header_name:
            errors["header_name"] = "Only a policy counting by a header names one."
        if self.algorithm == self.Algorithm.SLIDING_LOG:
            if self.limit is not None and self.limit > MAX_LOG_LIMIT:
                errors["limit"] = (
                    f"The exact sliding window keeps an entry per request: use GCRA above {MAX_LOG_LIMIT}."
                )
            if self.burst is not None:
                errors["burst"] = "Only GCRA takes a burst."
        if errors:
            raise ValidationError(errors)
