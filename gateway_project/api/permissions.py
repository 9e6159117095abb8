"""Who may do what: active staff users, by Django's model permissions (the admin's own).

Reading needs 'view', creating 'add', changing 'change', deleting 'delete' on the model; a view-only operator
can read everything it may view and change nothing. Actions name the permissions they need
(`action_permissions` on the viewset, by action name).
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission, DjangoModelPermissions


def is_operator(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class IsOperator(BasePermission):
    """Any active staff user (this instance's status)."""

    def has_permission(self, request, view) -> bool:
        return is_operator(request.user)


class OperatorModelPermissions(DjangoModelPermissions):
    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request, view) -> bool:
        if not is_operator(request.user):
            return False
        needed = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if needed is not None:
            return request.user.has_perms(needed)
        if not hasattr(view, "get_queryset"):
            # A view of live state (no model to ask) and a method it has no action for: it answers 405 itself.
            return True
        return super().has_permission(request, view)
