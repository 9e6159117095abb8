"""Configuration as code (proxy.configfile, gateway_export, gateway_import): validate all, then apply all."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from gateway_project import configfile, runtime
from gateway_project.configfile import Change, ConfigError
from gateway_project.models import ConfigRevision
from proxy.models import Route, Upstream
from tests.support.config import (
    TEST_ACTOR,
    assert_round_trip_is_a_no_op,
    import_and_apply,
    make_route,
    make_upstream,
    names,
    plan_text,
    problems_of,
)

KNOWN = ", ".join(sorted(section.key for section in configfile.sections()))

# Saves publish the configuration revision to Redis after commit: a real one, under a private prefix.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_prefix")]


@pytest.fixture
def seeded():
    """A configuration using most fields, created the way the admin does (validated, then saved)."""
    orders = make_upstream(
        "orders",
        "HTTPS://Orders.Internal:8443/v1/",
        connect_timeout=1.5,
        read_timeout=12,
        deadline=20.0,
        max_retries=3,
        backoff_factor=0.25,
        backoff_max=1.0,
        backoff_jitter=0.0,
        retry_on_statuses="503, 502,429",
        tls_verify=False,
    )
    users = make_upstream("users", "http://[::1]:8081", enabled=False)
    make_route(
        "orders-api",
        "/api/orders/",
        orders,
        methods="post,get",
        max_body_bytes=1024,
        description="Orders \u2014 line one\nline two: 'quoted' # not a comment",
    )
    make_route("users-any", "/users", users, host="*.Example.com", strip_prefix=False)
    make_route("users-off", "/users", users, host="*.example.com", methods="GET", enabled=False)
    make_route("root", "/", users, max_body_bytes=0)


def db_state():
    """Everything an import could write, including the timestamps and the revision every save bumps."""
    return (
        list(Upstream.objects.order_by("name").values()),
        list(Route.objects.order_by("name").values()),
        list(ConfigRevision.objects.values()),
    )


def upstream_item(name: str, base_url: str = "http://127.0.0.1:9", **fields) -> dict:
    return {"name": name, "base_url": base_url, **fields}


def route_item(name: str, path_prefix: str, upstream: str, **fields) -> dict:
    return {"name": name, "path_prefix": path_prefix, "upstream": upstream, **fields}


# export / import round trip


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_export_then_import_changes_nothing(seeded, fmt):
    assert_round_trip_is_a_no_op(fmt)


def test_export_is_normalized_and_sorted(seeded):
    document = configfile.export_document()
    assert document["version"] == configfile.FORMAT_VERSION
    assert [u["name"] for u in document["upstreams"]] == ["orders", "users"]
    assert [r["name"] for r in document["routes"]] == ["orders-api", "root", "users-any", "users-off"]
    orders = document["upstreams"][0]
    assert orders["base_url"] == "https://orders.internal:8443/v1"
    assert orders["retry_on_statuses"] == [429, 502, 503]
    assert orders["read_timeout"] == 12.0
    assert orders["tls_verify"] is False
    api = document["routes"][0]
    assert api == {
        "name": "orders-api",
        "path_prefix": "/api/orders",
        "host": "",
        "strip_prefix": True,
        "max_body_bytes": 1024,
        "require_api_key": False,
        "forward_api_key": False,
        "description": "Orders \u2014 line one\nline two: 'quoted' # not a comment",
        "enabled": True,
        "methods": ["GET", "POST"],
        "upstream": "orders",
    }
    assert document["routes"][1]["methods"] == []
    assert document["routes"][2]["host"] == "*.example.com"


def test_import_into_an_empty_database_then_export_gives_the_same_document(seeded):
    document = configfile.parse(configfile.dump(configfile.export_document()))
    Route.objects.all().delete()
    Upstream.objects.all().delete()

    changes = import_and_apply(document)
    assert changes == [
        "create upstream 'orders'",
        "create upstream 'users'",
        "create route 'orders-api'",
        "create route 'root'",
        "create route 'users-any'",
        "create route 'users-off'",
    ]
    assert configfile.export_document() == document
    assert Route.objects.get(name="orders-api").upstream == Upstream.objects.get(name="orders")
    assert configfile.plan(document).changes == []


def test_import_normalizes_values_like_the_admin():
    import_and_apply(
        {
            "version": 1,
            "upstreams": [upstream_item("u", "HTTP://U.Example:8080/v1/", retry_on_statuses=[504, 502, 504])],
            "routes": [route_item("r", "/api/", "u", host="API.example.com.", methods=["post", "get", "GET"])],
        }
    )
    upstream = Upstream.objects.get(name="u")
    route = Route.objects.get(name="r")
    assert upstream.base_url == "http://u.example:8080/v1"
    assert upstream.retry_on_statuses == "502,504"
    assert (route.path_prefix, route.host, route.methods) == ("/api", "api.example.com", "GET,POST")


def test_updates_name_the_changed_fields(seeded):
    document = configfile.export_document()
    document["upstreams"][0]["read_timeout"] = 13
    document["upstreams"][0]["retry_on_statuses"] = [502]
    document["routes"][0]["methods"] = ["GET"]
    document["routes"][0]["upstream"] = "users"
    assert plan_text(document) == [
        "update upstream 'orders': read_timeout, retry_on_statuses",
        "update route 'orders-api': methods, upstream_id",
    ]


def test_fields_left_out_take_their_defaults(seeded):
    """The document is the desired state: an existing object's field that the item omits goes back to default."""
    document = configfile.export_document()
    document["routes"][0] = {"name": "orders-api", "path_prefix": "/api/orders", "upstream": "orders"}
    changes = import_and_apply(document)
    assert changes == ["update route 'orders-api': max_body_bytes, description, methods"]
    route = Route.objects.get(name="orders-api")
    assert (route.methods, route.max_body_bytes, route.description) == ("", None, "")


def test_a_section_left_out_is_not_touched(seeded):
    before = db_state()
    assert plan_text({"version": 1}) == []
    assert plan_text({"version": 1}, prune=True) == []
    assert plan_text({"version": 1, "upstreams": configfile.export_document()["upstreams"]}, prune=True) == []
    assert db_state() == before


def test_new_route_on_a_new_upstream_in_one_document():
    import_and_apply({"version": 1, "upstreams": [upstream_item("new")], "routes": [route_item("r", "/new", "new")]})
    assert Route.objects.get(name="r").upstream.name == "new"


def test_apply_publishes_the_new_revision_to_redis(seeded, redis_client, django_capture_on_commit_callbacks):
    document = configfile.export_document()
    document["routes"][0]["description"] = "changed"
    plan = configfile.plan(document)
    revision_before = runtime.db_state()[0]
    with django_capture_on_commit_callbacks(execute=True):
        configfile.apply(plan, actor=TEST_ACTOR)
    revision, token = runtime.db_state()
    assert revision == revision_before + 1
    assert redis_client.get(runtime.revision_key()) == token.encode()


# invalid documents: every problem, with its location, and nothing written


def test_every_problem_is_reported_with_its_location_and_nothing_changes(seeded):
    document = yaml.safe_load(
        """
version: 2
widgets: []
upstreams:
- name: orders
  base_url: ftp://orders.internal
  timeout: 3
- name: b
  base_url: http://b.internal
  connect_timeout: fast
  max_retries: true
  retry_on_statuses: [502, "503"]
- name: c
  base_url: http://c.internal:0
  read_timeout: 0
  max_retries: 11
- base_url: http://noname.internal
- 7
routes:
- name: r1
  path_prefix: api
  upstream: nope
  methods: [TRACE]
- name: r2
  path_prefix: /x
- name: bad name
  path_prefix: /healthz/x
  upstream: b
  host: "api.example.com:8080"
  strip_prefix: "yes"
"""
    )
    before = db_state()
    problems = problems_of(document)
    assert db_state() == before
    expected = [
        "version: must be 1, got 2",
        f"widgets: unknown section (known: {KNOWN})",
        "upstreams[0] (orders).base_url: The scheme must be http or https.",
        "upstreams[0] (orders).timeout: unknown field",
        "upstreams[1] (b).connect_timeout: expected an integer or a number, got str",
        "upstreams[1] (b).max_retries: expected an integer, got a boolean",
        "upstreams[1] (b).retry_on_statuses: must be a list of status codes",
        "upstreams[2] (c).base_url: The port must be between 1 and 65535.",
        "upstreams[3].name: is required and must be a string",
        "upstreams[4]: must be a mapping",
        "routes[0] (r1).upstream: no upstream named 'nope'",
        "routes[0] (r1).path_prefix: The path prefix must start with '/'.",
        "routes[0] (r1).methods: Unknown or refused method(s): TRACE. Allowed: GET, HEAD, POST, PUT, PATCH, "
        "DELETE, OPTIONS.",
        "routes[1] (r2).upstream: is required",
        "routes[2] (bad name).strip_prefix: expected true or false, got str",
        "routes[2] (bad name).path_prefix: /healthz is served by the gateway itself and cannot be routed.",
    ]
    for problem in expected:
        assert problem in problems
    located = [p for p in problems if p.startswith(("upstreams[2] (c).read_timeout", "upstreams[2] (c).max_retries"))]
    assert len(located) == 2
    assert any(p.startswith("routes[2] (bad name).name:") for p in problems)
    assert any(p.startswith("routes[2] (bad name).host:") for p in problems)


def test_unknown_fields_and_sections_are_errors():
    problems = problems_of(
        {
            "version": 1,
            "upstream": [],
            "widgets": [],
            "upstreams": [upstream_item("u", timeout=3, Base_URL="http://x")],
            "routes": [route_item("r", "/r", "u", method=["GET"])],
        }
    )
    assert problems == [
        f"upstream: unknown section (known: {KNOWN})",
        f"widgets: unknown section (known: {KNOWN})",
        "upstreams[0] (u).Base_URL: unknown field",
        "upstreams[0] (u).timeout: unknown field",
        "routes[0] (r).method: unknown field",
    ]


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({}, "version: must be 1, got None"),
        ({"version": "1"}, "version: must be 1, got '1'"),
        ({"version": 1, "upstreams": {"name": "u"}}, "upstreams: must be a list"),
        ({"version": 1, "routes": "r"}, "routes: must be a list"),
        ({"version": 1, "upstreams": [{"name": ""}]}, "upstreams[0].name: is required and must be a string"),
        ({"version": 1, "upstreams": [{"name": 5}]}, "upstreams[0].name: is required and must be a string"),
        (
            {"version": 1, "upstreams": [upstream_item("u", retry_on_statuses=[502, True])]},
            "upstreams[0] (u).retry_on_statuses: must be a list of status codes",
        ),
        (
            {"version": 1, "upstreams": [upstream_item("u", retry_on_statuses=[200])]},
            "upstreams[0] (u).retry_on_statuses: '200' is not an HTTP status code between 400 and 599.",
        ),
        (
            {"version": 1, "upstreams": [upstream_item("u")], "routes": [route_item("r", "/r", "u", methods="GET")]},
            "routes[0] (r).methods: expected a list, got str",
        ),
        (
            {"version": 1, "upstreams": [upstream_item("u")], "routes": [route_item("r", "/r", "u", methods=[1])]},
            "routes[0] (r).methods: must be a list of method names",
        ),
        (
            {"version": 1, "upstreams": [upstream_item("u")], "routes": [route_item("r", "/r", 3)]},
            "routes[0] (r).upstream: expected a string, got int",
        ),
        (
            {
                "version": 1,
                "upstreams": [upstream_item("u")],
                "routes": [route_item("r", "/r", "u", max_body_bytes=1.5)],
            },
            "routes[0] (r).max_body_bytes: expected an integer, got float",
        ),
        (
            {"version": 1, "upstreams": [upstream_item("u", enabled=None)]},
            "upstreams[0] (u).enabled: expected true or false, got NoneType",
        ),
    ],
)
def test_type_and_shape_problems(document, problem):
    assert problem in problems_of(document)


def test_not_a_document():
    with pytest.raises(ConfigError, match="not valid YAML or JSON"):
        configfile.parse("upstreams: [unclosed")
    for text in ("", "- a\n- b\n", "just text", "42"):
        with pytest.raises(ConfigError, match="must be a mapping"):
            configfile.parse(text)
    assert configfile.parse('{"version": 1, "routes": []}') == {"version": 1, "routes": []}


def test_duplicate_names_are_reported_and_the_first_one_is_kept():
    problems = problems_of(
        {
            "version": 1,
            "upstreams": [upstream_item("u"), upstream_item("u", "ftp://other"), upstream_item("v")],
            "routes": [route_item("r", "/a", "u"), route_item("r", "/b", "v"), route_item("r", "/c", "v")],
        }
    )
    assert problems == [
        "upstreams[1] (u): name 'u' appears twice",
        "routes[1] (r): name 'r' appears twice",
        "routes[2] (r): name 'r' appears twice",
    ]


def test_route_referencing_a_missing_upstream(seeded):
    before = db_state()
    document = configfile.export_document()
    document["routes"][0]["upstream"] = "gone"
    assert problems_of(document) == ["routes[0] (orders-api).upstream: no upstream named 'gone'"]
    assert db_state() == before


def test_an_upstream_item_with_errors_still_resolves_for_its_routes():
    """A route naming an invalid upstream is not reported a second time for it."""
    problems = problems_of(
        {"version": 1, "upstreams": [upstream_item("u", "ftp://u")], "routes": [route_item("r", "/r", "u")]}
    )
    assert problems == ["upstreams[0] (u).base_url: The scheme must be http or https."]


# conflicts between routes


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"path_prefix": "/api"}, {"path_prefix": "/api/"}),
        ({"path_prefix": "/api", "methods": ["GET"]}, {"path_prefix": "/api", "methods": ["POST", "GET"]}),
        ({"path_prefix": "/api", "methods": ["GET"]}, {"path_prefix": "/api"}),
        ({"path_prefix": "/api", "methods": ["GET"]}, {"path_prefix": "/api", "methods": ["HEAD"]}),
        ({"path_prefix": "/", "host": "API.example.com"}, {"path_prefix": "/", "host": "api.example.com."}),
        ({"path_prefix": "/x", "host": "*.example.com"}, {"path_prefix": "/x", "host": "*.example.com"}),
    ],
)
def test_two_routes_in_the_document_that_match_the_same_requests(first, second):
    problems = problems_of(
        {
            "version": 1,
            "upstreams": [upstream_item("u")],
            "routes": [
                {"name": "a", "upstream": "u", **first},
                {"name": "b", "upstream": "u", **second},
            ],
        }
    )
    assert len(problems) == 1
    assert problems[0].startswith("routes (a): Route 'b' already matches the same requests")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"path_prefix": "/api", "methods": ["GET"]}, {"path_prefix": "/api", "methods": ["POST", "PUT"]}),
        ({"path_prefix": "/api"}, {"path_prefix": "/api/v2"}),
        ({"path_prefix": "/api"}, {"path_prefix": "/api", "host": "api.example.com"}),
        ({"path_prefix": "/api", "host": "*.example.com"}, {"path_prefix": "/api", "host": "api.example.com"}),
        ({"path_prefix": "/api"}, {"path_prefix": "/api", "enabled": False}),
    ],
)
def test_routes_that_do_not_conflict(first, second):
    changes = plan_text(
        {
            "version": 1,
            "upstreams": [upstream_item("u")],
            "routes": [{"name": "a", "upstream": "u", **first}, {"name": "b", "upstream": "u", **second}],
        }
    )
    assert changes == ["create upstream 'u'", "create route 'a'", "create route 'b'"]


# leftovers: kept (and validated against) unless --prune


def test_without_prune_leftovers_are_kept(seeded):
    document = {
        "version": 1,
        "upstreams": [upstream_item("extra")],
        "routes": [route_item("extra", "/extra", "extra")],
    }
    assert import_and_apply(document) == ["create upstream 'extra'", "create route 'extra'"]
    assert names(Upstream) == ["extra", "orders", "users"]
    assert names(Route) == ["extra", "orders-api", "root", "users-any", "users-off"]


def test_leftover_enabled_route_conflicts_with_an_imported_one(seeded):
    before = db_state()
    document = {
        "version": 1,
        "upstreams": [upstream_item("extra")],
        "routes": [route_item("renamed", "/api/orders/", "extra", methods=["GET"])],
    }
    problems = problems_of(document)
    assert len(problems) == 1
    assert problems[0].startswith("routes (orders-api): Route 'renamed' already matches the same requests")
    assert db_state() == before
    # With prune, the leftover goes, and so does the conflict.
    assert plan_text(document, prune=True) == [
        "create upstream 'extra'",
        "create route 'renamed'",
        "delete route 'orders-api'",
        "delete route 'root'",
        "delete route 'users-any'",
        "delete route 'users-off'",
        "delete upstream 'orders'",
        "delete upstream 'users'",
    ]


def test_leftover_disabled_route_does_not_conflict(seeded):
    document = {"version": 1, "routes": [route_item("new-users", "/users", "users", host="*.example.com")]}
    problems = problems_of(document)
    # users-any (enabled, all methods) conflicts; users-off (disabled) does not.
    assert len(problems) == 1
    assert problems[0].startswith("routes (new-users): Route 'users-any' already matches the same requests")


def test_prune_deletes_routes_then_upstreams(seeded):
    document = {
        "version": 1,
        "upstreams": [upstream_item("users", "http://[::1]:8081", enabled=False)],
        "routes": [route_item("root", "/", "users", max_body_bytes=0)],
    }
    changes = import_and_apply(document, prune=True)
    assert changes == [
        "delete route 'orders-api'",
        "delete route 'users-any'",
        "delete route 'users-off'",
        "delete upstream 'orders'",
    ]
    assert names(Upstream) == ["users"]
    assert names(Route) == ["root"]


def test_prune_moves_a_route_before_deleting_its_old_upstream(seeded):
    document = configfile.export_document()
    document["upstreams"] = [u for u in document["upstreams"] if u["name"] != "orders"]
    document["routes"][0]["upstream"] = "users"
    changes = import_and_apply(document, prune=True)
    assert changes == ["update route 'orders-api': upstream_id", "delete upstream 'orders'"]
    assert Route.objects.get(name="orders-api").upstream.name == "users"
    assert names(Upstream) == ["users"]


def test_prune_refuses_to_delete_an_upstream_a_kept_route_uses(seeded):
    document = configfile.export_document()
    document["upstreams"] = [u for u in document["upstreams"] if u["name"] != "orders"]
    before = db_state()
    assert problems_of(document, prune=True) == [
        "routes[0] (orders-api).upstream: no upstream named 'orders'",
        "routes (orders-api): its upstream 'orders' would be deleted",
    ]
    assert db_state() == before


def test_prune_without_a_routes_section_refuses_to_delete_a_used_upstream(seeded):
    document = {
        "version": 1,
        "upstreams": [u for u in configfile.export_document()["upstreams"] if u["name"] != "orders"],
    }
    with pytest.raises(ConfigError):
        configfile.plan(document, prune=True)


def test_nan_is_not_a_valid_timeout():
    document = configfile.parse("version: 1\nupstreams:\n- name: u\n  base_url: http://u\n  connect_timeout: .nan\n")
    with pytest.raises(ConfigError):
        configfile.plan(document)


# the management commands


def write(tmp_path, document, name="config.yaml") -> str:
    path = tmp_path / name
    path.write_text(configfile.dump(document, "json" if name.endswith(".json") else "yaml"), encoding="utf-8")
    return str(path)


def run(command: str, *args, **options) -> str:
    out = io.StringIO()
    call_command(command, *args, stdout=out, **options)
    return out.getvalue()


def test_import_command_applies_a_document(tmp_path):
    path = write(
        tmp_path,
        {"version": 1, "upstreams": [upstream_item("u")], "routes": [route_item("r", "/r", "u", methods=["GET"])]},
    )
    output = run("gateway_import", path)
    assert "  create upstream 'u'\n  create route 'r'\n" in output
    assert "Applied 2 change(s)." in output
    assert names(Route) == ["r"]
    assert run("gateway_import", path) == "No changes.\n"


def test_import_command_dry_run_prints_and_writes_nothing(seeded, tmp_path):
    document = configfile.export_document()
    document["upstreams"][0]["read_timeout"] = 99.0
    document["routes"] = [*document["routes"][1:], route_item("new", "/new", "orders")]
    path = write(tmp_path, document)
    before = db_state()
    output = run("gateway_import", path, dry_run=True, prune=True)
    assert output.splitlines() == [
        "  update upstream 'orders'",
        "      read_timeout: 12.0 → 99.0",
        "  create route 'new'",
        "  delete route 'orders-api'",
        "Dry run: 3 change(s) would be applied; nothing was changed.",
    ]
    assert db_state() == before


def test_import_command_failure_raises_command_error_and_changes_nothing(seeded, tmp_path):
    document = configfile.export_document()
    document["upstreams"][0]["base_url"] = "ftp://orders.internal"
    document["upstreams"].append(upstream_item("fresh"))
    document["routes"][0]["path_prefix"] = "no-slash"
    path = write(tmp_path, document)
    before = db_state()
    with pytest.raises(CommandError) as excinfo:
        run("gateway_import", path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: 2 problem(s), nothing was changed:")
    assert "upstreams[0] (orders).base_url: The scheme must be http or https." in message
    assert "routes[0] (orders-api).path_prefix: The path prefix must start with '/'." in message
    assert db_state() == before


def test_import_command_unreadable_file(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        run("gateway_import", str(tmp_path / "missing.yaml"))


def test_import_command_reads_standard_input(monkeypatch):
    document = {"version": 1, "upstreams": [upstream_item("stdin")]}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(document)))
    assert "Applied 1 change(s)." in run("gateway_import", "-")
    assert names(Upstream) == ["stdin"]


def test_export_command_json_reimports_as_no_changes(seeded, tmp_path):
    output = run("gateway_export", format="json")
    document = json.loads(output)
    assert document == configfile.export_document()
    path = tmp_path / "export.json"
    path.write_text(output, encoding="utf-8")
    before = db_state()
    assert run("gateway_import", str(path), prune=True) == "No changes.\n"
    assert db_state() == before


def test_export_command_yaml_to_a_file(seeded, tmp_path):
    path = tmp_path / "out.yaml"
    assert run("gateway_export", output=str(path)) == ""
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == configfile.export_document()
    assert run("gateway_import", str(path)) == "No changes.\n"


def test_change_text():
    assert str(Change("create", "routes", "r")) == "create route 'r'"
    assert str(Change("update", "upstreams", "u", ("base_url", "enabled"))) == "update upstream 'u': base_url, enabled"
    assert str(Change("delete", "upstreams", "u")) == "delete upstream 'u'"


def test_dry_run_shows_old_and_new_values_in_the_documents_terms(seeded, tmp_path):
    """Names instead of ids, status lists instead of stored text, the breaker's fields under `breaker.`."""
    make_upstream("spare", "http://spare.internal")
    document = configfile.export_document()
    document["upstreams"][0]["retry_on_statuses"] = [503]
    document["upstreams"][0]["breaker"]["mode"] = "forced_open"
    document["routes"][0]["upstream"] = "spare"
    document["routes"][0]["max_body_bytes"] = None
    output = run("gateway_import", write(tmp_path, document), dry_run=True)
    upstream, route = document["upstreams"][0]["name"], document["routes"][0]["name"]
    assert (upstream, route) == ("orders", "orders-api")
    assert output.splitlines() == [
        "  update upstream 'orders'",
        "      retry_on_statuses: [429, 502, 503] → [503]",
        "      breaker.mode: normal → forced_open",
        "  update route 'orders-api'",
        "      max_body_bytes: 1024 → null",
        "      upstream: orders → spare",
        "Dry run: 2 change(s) would be applied; nothing was changed.",
    ]


# targets, balancing, health and the new route options


def test_an_upstream_with_only_a_base_url_exports_exactly_as_before():
    make_route("plain", "/plain", make_upstream("plain", "http://plain.internal:8080/v1"))
    document = configfile.export_document()
    (upstream,) = document["upstreams"]
    assert list(upstream) == [
        "name",
        "base_url",
        "connect_timeout",
        "read_timeout",
        "deadline",
        "max_retries",
        "backoff_factor",
        "backoff_max",
        "backoff_jitter",
        "tls_verify",
        "enabled",
        "retry_on_statuses",
        "breaker",
    ]
    (route,) = document["routes"]
    assert "retry_idempotency_key" not in route
    assert "deadline_header" not in route
    assert "upgrade_protocols" not in route
    # And a document written before targets existed imports as no change.
    assert configfile.plan(document).changes == []


def test_targets_and_the_new_settings_round_trip():
    document = {
        "version": 1,
        "upstreams": [
            upstream_item(
                "orders",
                "http://orders.internal/v1",
                balancing="least_requests",
                targets=[
                    {"address": "10.0.0.2:8080", "weight": 30},
                    {"address": "10.0.0.1:8080", "weight": 70, "enabled": False},
                ],
                ejection={"consecutive_failures": 3, "seconds": 5, "statuses": [503, 502]},
                health_check={"path": "/healthz", "interval": 2, "statuses": [200, 204]},
                retry_budget={"percent": 10, "min_retries": 1},
            )
        ],
        "routes": [
            route_item(
                "orders",
                "/orders",
                "orders",
                retry_idempotency_key=True,
                deadline_header="X-Deadline-Ms",
                upgrade_protocols=["WebSocket"],
            )
        ],
    }
    assert import_and_apply(document) == ["create upstream 'orders'", "create route 'orders'"]
    upstream = Upstream.objects.get(name="orders")
    assert [(t.address, t.weight, t.enabled) for t in upstream.targets.order_by("address")] == [
        ("10.0.0.1:8080", 70, False),
        ("10.0.0.2:8080", 30, True),
    ]
    exported = configfile.export_document()
    item = exported["upstreams"][0]
    assert item["targets"][0] == {"address": "10.0.0.1:8080", "weight": 70, "enabled": False}
    assert item["ejection"] == {
        "consecutive_failures": 3,
        "seconds": 5.0,
        "max_seconds": 300.0,
        "max_percent": 10,
        "statuses": [502, 503],
    }
    assert item["health_check"]["statuses"] == [200, 204]
    assert item["retry_budget"] == {"percent": 10, "min_retries": 1}
    assert exported["routes"][0]["upgrade_protocols"] == ["websocket"]
    assert_round_trip_is_a_no_op("yaml")

    # Changing a target's weight, removing one and adding another is one update of the upstream.
    item["targets"] = [{"address": "10.0.0.1:8080", "weight": 70, "enabled": True}, {"address": "10.0.0.3:80"}]
    assert import_and_apply(exported) == ["update upstream 'orders': targets"]
    assert sorted(upstream.targets.values_list("address", "weight", "enabled")) == [
        ("10.0.0.1:8080", 70, True),
        ("10.0.0.3:80", 100, True),
    ]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"targets": [{"address": "10.0.0.1"}]}, "upstreams[0] (u).targets[0].address: Enter host:port"),
        (
            {"targets": [{"address": "a:1"}, {"address": "A:1"}]},
            "upstreams[0] (u).targets[1].address: a:1 appears twice",
        ),
        ({"targets": [{"address": "a:1", "weight": 0}]}, "upstreams[0] (u).targets[0].weight: Ensure this value"),
        ({"targets": [{"address": "a:1", "port": 1}]}, "upstreams[0] (u).targets[0].port: unknown field"),
        ({"balancing": "random"}, "upstreams[0] (u).balancing: must be one of round_robin, least_requests"),
        ({"ejection": {"statuses": [200]}}, "upstreams[0] (u).ejection.statuses: '200' is not an HTTP status"),
        ({"health_check": {"path": "healthz"}}, "upstreams[0] (u).health_check.path: Enter a path"),
        ({"retry_budget": {"percent": 101}}, "upstreams[0] (u).retry_budget.percent: Ensure this value"),
    ],
)
def test_problems_in_the_new_upstream_settings_are_located(fields, problem):
    problems = problems_of({"version": 1, "upstreams": [upstream_item("u", **fields)]})
    assert any(p.startswith(problem) for p in problems), problems


def test_h2c_cannot_be_an_upgrade_protocol():
    problems = problems_of(
        {
            "version": 1,
            "upstreams": [upstream_item("u")],
            "routes": [route_item("r", "/r", "u", upgrade_protocols=["h2c"])],
        }
    )
    assert any("h2c cannot be proxied" in p for p in problems), problems
