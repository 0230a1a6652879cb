#!/usr/bin/env bash
# Installs what the test suite needs when it is missing, then runs it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)  # a real scraper of /metrics, and promtool
# PostgreSQL: the server on 127.0.0.1:5432 if one answers, else a private one the tests start from the binaries.
(exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
  || missing+=(postgresql)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# RabbitMQ's management API (the broker page can read queue depths from it), where RabbitMQ is installed.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
  timeout 120 $SUDO rabbitmq-plugins enable -q rabbitmq_management >/dev/null 2>&1 \
    || echo "could not enable RabbitMQ's management plugin: its test is skipped"
fi

python3 -m pip install -q -e '.[test]'
exec python3 -m pytest -q "$@"
