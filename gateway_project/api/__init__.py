"""The management API under /_gateway/api/v1/ (Django REST framework), a thin layer over the service functions.

The core owns what every endpoint shares: authentication (bearer tokens of staff users, or the admin's
session with CSRF), permissions (Django's model permissions: viewing needs 'view', changing 'add', 'change' or
'delete'), the error format, ETags, the router and the OpenAPI schema, and its own endpoints (the audit trail,
the whole configuration, this instance's status, tokens). Each app contributes its viewsets through
`registry.api_viewsets`. Only clients in GATEWAY_ADMIN_ALLOWED_NETWORKS reach it (proxy's RouteMiddleware).
"""
