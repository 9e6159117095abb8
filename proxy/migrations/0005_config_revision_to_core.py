"""The configuration revision moved to the core app (gateway_project); carry the current row over."""

from django.db import migrations


def copy_revision(apps, schema_editor):
    old = apps.get_model("proxy", "ConfigRevision").objects.filter(pk=1).first()
    if old is not None:
        apps.get_model("gateway", "ConfigRevision").objects.update_or_create(
            pk=1, defaults={"revision": old.revision, "token": old.token}
        )


def copy_back(apps, schema_editor):
    new = apps.get_model("gateway", "ConfigRevision").objects.filter(pk=1).first()
    if new is not None:
        apps.get_model("proxy", "ConfigRevision").objects.update_or_create(
            pk=1, defaults={"revision": new.revision, "token": new.token}
        )


class Migration(migrations.Migration):
    dependencies = [("proxy", "0004_upstream_breaker"), ("gateway", "0001_initial")]

    operations = [
        migrations.RunPython(copy_revision, copy_back),
        migrations.DeleteModel(name="ConfigRevision"),
    ]
