"""`Authorization: Bearer gwt_...`: a token of a staff user (gateway_project/tokens.py)."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from gateway_project import tokens


class BearerTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Send one token: 'Authorization: Bearer <token>'.")
        token = tokens.authenticate(parts[1].decode("latin-1"))
        if token is None:
            raise AuthenticationFailed("The token is unknown or revoked, or its user is no active staff user.")
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="gateway"'
