#!/bin/sh
# Start the gateway container: database schema, the demo route and (first start) an admin login, the
# configuration files mounted in /etc/gateway/config, then gunicorn.
set -eu
python manage.py migrate --noinput
python manage.py gateway_demo
for file in /etc/gateway/config/*.yaml; do
    [ -e "$file" ] && python manage.py gateway_import "$file"
done
exec gunicorn -c gunicorn.conf.py gateway_project.wsgi
