from django.db import migrations


def create_row(apps, schema_editor):
    ConfigRevision = apps.get_model("proxy", "ConfigRevision")
    ConfigRevision.objects.get_or_create(pk=1, defaults={"revision": 1, "token": "initial"})


class Migration(migrations.Migration):
    dependencies = [("proxy", "0001_initial")]

    operations = [migrations.RunPython(create_row, migrations.RunPython.noop)]
