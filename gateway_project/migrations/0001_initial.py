from django.db import migrations, models


def create_row(apps, schema_editor):
    ConfigRevision = apps.get_model("gateway", "ConfigRevision")
    ConfigRevision.objects.get_or_create(pk=1, defaults={"revision": 1, "token": "initial"})


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="ConfigRevision",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("revision", models.BigIntegerField(default=1)),
                ("token", models.CharField(default="initial", max_length=32)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"verbose_name": "configuration revision"},
        ),
        migrations.RunPython(create_row, migrations.RunPython.noop),
    ]
