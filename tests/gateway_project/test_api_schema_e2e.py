"""Property-based: schemathesis drives every operation of the API's OpenAPI schema against a real gunicorn
gateway, with a superuser's token. No answer may be a server error, and every answer must conform to the
schema (status code documented, body valid)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from django.contrib.auth import get_user_model

from gateway_project import tokens
from tests.support.config import TEST_ACTOR, make_route, make_upstream

pytestmark = pytest.mark.slow

#: Bounded: about 65 s (about 2,400 requests) on the 2-core development machine.
EXAMPLES_PER_OPERATION = 15


def test_every_operation_of_the_schema_answers_without_a_server_error_and_as_documented(live, upstream, tmp_path):
    ops = get_user_model().objects.create_superuser("fuzzer", "f@example.com", "unused password 2")
    _, plaintext = tokens.create_token(user=ops, label="schemathesis", actor=TEST_ACTOR)
    make_route("seeded", "/seeded", make_upstream("seeded", upstream.url))  # something to read, change, delete
    schema = yaml.safe_load(requests.get(live.url("/_gateway/api/v1/schema/"), timeout=10).text)
    operations = sum(len(methods) for methods in schema["paths"].values())
    assert operations >= 30

    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            live.url("/_gateway/api/v1/schema/"),
            "--url",
            live.base,  # the schema's paths start with /_gateway/api/v1
            "--header",
            f"Authorization: Bearer {plaintext}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            # One worker: with several, hypothesis describes filters with ast.parse from several threads at once,
            # which CPython 3.11 can fail ("AST constructor recursion depth mismatch"), seen here once.
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--seed",
            "15",
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert f"Tested: {operations}\n" in result.stdout, report  # every operation, none skipped
    assert " passed\n" in result.stdout and "failed" not in result.stdout, report
