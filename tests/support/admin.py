"""Logging into the admin through a gateway, as an operator's browser does."""

from __future__ import annotations

import re

import requests
from django.contrib.auth import get_user_model


def login(gateway, client_address: str) -> requests.Session:
    get_user_model().objects.create_superuser("operator", "op@example.com", "correct horse battery")
    session = requests.Session()
    session.headers["X-Forwarded-For"] = client_address
    page = session.get(gateway.url("/admin/login/"), timeout=10)
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(
        gateway.url("/admin/login/?next=/admin/"),
        data={"csrfmiddlewaretoken": token, "username": "operator", "password": "correct horse battery"},
        headers={"Referer": gateway.url("/admin/login/")},
        timeout=10,
    )
    assert response.status_code == 200
    assert "Log out" in response.text
    return session
