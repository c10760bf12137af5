#!/usr/bin/env bash
# ./run.sh          serve the API on $HOST:$PORT (127.0.0.1:5000)
# ./run.sh worker   run a PDF worker (for BROKER_URL=amqp://...)
# ./run.sh test     run every test
# ./run.sh bench    run the benchmark (bench.py; --quick for a smoke run), write BENCHMARKS.md
# ./run.sh soak [SECONDS]  mixed load on server and two workers on RabbitMQ (soak.py; 60 s)
# Each first makes .venv and installs the requirements when they changed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11 or newer is needed (set PYTHON=...)" >&2; exit 1; }

install() {  # install requirement files into .venv unless already done for this content
  local stamp=".venv/.installed-$(cat "$@" | sha256sum | cut -c1-16)"
  [ -e "$stamp" ] && return
  .venv/bin/python -m pip install --quiet --disable-pip-version-check $(printf -- '-r %s ' "$@")
  touch "$stamp"
}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
command=${1:-serve}
case "$command" in
  serve)  install requirements.txt; exec .venv/bin/python server.py ;;
  worker) install requirements.txt; exec .venv/bin/python worker.py ;;
  test)   install requirements.txt requirements-dev.txt
          shift; exec .venv/bin/python -m unittest "${@:-discover}" ;;
  bench)  install requirements.txt requirements-dev.txt
          shift; exec .venv/bin/python bench.py "$@" ;;
  soak)   install requirements.txt requirements-dev.txt
          shift; exec .venv/bin/python soak.py "$@" ;;
  *) echo "usage: ./run.sh [serve|worker|test|bench|soak]" >&2; exit 2 ;;
esac
