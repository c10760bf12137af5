#!/usr/bin/env bash
# ./run.sh          serve the API on $HOST:$PORT (127.0.0.1:5000)
# ./run.sh worker   run a PDF worker (for BROKER_URL=amqp://...)
# ./run.sh test     run every test (two unittest processes: tools/run_tests.py); test_x: one module
# ./run.sh lint     check the code with ruff (lint rules and formatting), the shell
#                   scripts with shellcheck and the Containerfile with hadolint
# ./run.sh bench    run the benchmark (tools/bench.py; --quick for a smoke run), write BENCHMARKS.md
# ./run.sh soak [SECONDS]  mixed load on server and two workers on RabbitMQ (tools/soak.py; 60 s)
# ./run.sh soak --chaos [SECONDS]  that load on two servers and two workers, PostgreSQL and a
#                   RabbitMQ node of its own, all killed and restarted meanwhile (tools/chaos.py; 90 s)
# ./run.sh migrate  bring the database to the newest schema (servers and workers also do at start)
# ./run.sh backup FILE  copy the live SQLite database consistently to FILE
# ./run.sh container-test  build the image with podman (tools/container_test.sh) and test it (test_container.py)
# Each first makes .venv and installs the requirements when they changed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11 or newer is needed (set PYTHON=...)" >&2; exit 1; }

make_venv() {  # a .venv made by this very interpreter, with pip; else start it over
  local made_by
  made_by=".venv/.made-by-$("$PYTHON" -c 'import sys; print(sys.executable)' | sha256sum | cut -c1-16)"
  [ -e "$made_by" ] && [ -x .venv/bin/python ] && return
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv  # half made: the next run must not take it for a working one
    echo "Could not make a virtual environment with pip in .venv using $PYTHON." >&2
    echo "On Debian or Ubuntu: apt-get install python3-venv (or set PYTHON=...)." >&2
    exit 1
  fi
  touch "$made_by"
}

install() {  # install requirement files into .venv unless already done for this content
  local stamp file requirements=()
  stamp=".venv/.installed-$(cat "$@" | sha256sum | cut -c1-16)"
  [ -e "$stamp" ] && return
  for file in "$@"; do requirements+=(-r "$file"); done
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  touch "$stamp"
}

make_venv
command=${1:-serve}
case "$command" in
  serve)  install requirements.txt; exec .venv/bin/python server.py ;;
  worker) install requirements.txt; exec .venv/bin/python worker.py ;;
  test)   install requirements.txt requirements-dev.txt
          shift; exec .venv/bin/python tools/run_tests.py "$@" ;;
  lint)   install requirements.txt requirements-dev.txt
          .venv/bin/ruff check . && .venv/bin/ruff format --check . \
            && shellcheck run.sh tools/*.sh .ci/run && exec .venv/bin/hadolint Containerfile proxy/Containerfile ;;
  bench)  install requirements.txt requirements-dev.txt
          shift; exec .venv/bin/python tools/bench.py "$@" ;;
  soak)   install requirements.txt requirements-dev.txt
          shift; exec .venv/bin/python tools/soak.py "$@" ;;
  migrate) install requirements.txt; exec .venv/bin/python migrate.py ;;
  backup) install requirements.txt
          shift; exec .venv/bin/python tools/backup.py "$@" ;;
  container-test) install requirements.txt requirements-dev.txt
          shift; exec bash tools/container_test.sh "$@" ;;
  *) echo "usage: ./run.sh [serve|worker|test|lint|bench|soak|migrate|backup FILE|container-test]" >&2; exit 2 ;;
esac
