#!/usr/bin/env bash
# ./run.sh container-test: build the image from this checkout with podman, with
# no image registry (none is reachable here), and run test_container.py on it.
#
#  1. podman, runc and mmdebstrap from Debian's packages, when missing;
#  2. a Debian bookworm base image (python3 3.11 and its venv module) made by
#     mmdebstrap and imported: it stands in for python:3.11-slim; and one
#     with Debian's caddy, for the proxy;
#  3. the wheels of requirements.txt (the PostgreSQL driver included)
#     downloaded on this host with pip, for the image's Python;
#  4. the Containerfile built with them (BASE, PIP_FIND_LINKS, PIP_NO_INDEX),
#     tagged localhost/game-stats-api:latest, and proxy/Containerfile on the
#     caddy base, tagged localhost/game-stats-proxy:latest;
#  5. test_container.py run on them.
# The base images and the wheels are kept between runs, keyed by what makes
# them, in $CONTAINER_CACHE (/var/cache/game-stats-api, else ~/.cache/game-stats-api).
# Arguments go to unittest (e.g. -v).
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) fails the script too
cd "$(dirname "$0")/.."

IMAGE=localhost/game-stats-api:latest
PROXY_IMAGE=localhost/game-stats-proxy:latest
# On this machine crun cannot set rlimits: podman uses runc, with rlimits given.
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
PROXY_PACKAGES=caddy,ca-certificates
PYTHON_VERSION=3.11  # bookworm's, and python:3.11-slim's
step() { printf '\n== %s\n' "$*" >&2; }

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cache=${CONTAINER_CACHE:-/var/cache/game-stats-api}
mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || cache=${HOME:-/tmp}/.cache/game-stats-api
mkdir -p "$cache"
scratch=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$scratch" .container-wheels' EXIT

# The bases: documentation, manual pages and translations left out (dpkg excludes).
base_image() {  # $1: Debian packages; prints the tag of a base image of them, made unless kept
  local recipe=(mmdebstrap --variant=minbase "--include=$1"
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*' "$SUITE")
  local tag
  tag=localhost/game-stats-base:$SUITE-$(printf '%s\n' "${recipe[@]}" | sha256sum | cut -c1-12)
  if "${PODMAN[@]}" image exists "$tag"; then
    step "base image $tag of $1 (kept from an earlier run)"
  else
    step "making the base image $tag of $1 with mmdebstrap"
    "${recipe[@]}" "$scratch/base.tar" >&2
    "${PODMAN[@]}" import --quiet "$scratch/base.tar" "$tag" >/dev/null
    rm -f "$scratch/base.tar"
  fi
  echo "$tag"
}
base=$(base_image "$PACKAGES")
proxy_base=$(base_image "$PROXY_PACKAGES")

# The wheels, for the image's CPython on this machine's architecture (manylinux
# up to bookworm's glibc 2.36); binary only: the image has no compiler.
arch=$(uname -m)
platforms=(--platform "manylinux2014_$arch")
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
key=$( (cat requirements.txt; echo "$PYTHON_VERSION $arch") | sha256sum | cut -c1-12)
wheels=$cache/wheels-$key
if [ -e "$wheels/.complete" ]; then
  step "wheels in $wheels (kept from an earlier run)"
else
  step "downloading the wheels into $wheels"
  rm -rf "$wheels"
  if ! .venv/bin/python -m pip download --disable-pip-version-check --dest "$wheels" \
      --only-binary=:all: --implementation cp --python-version "$PYTHON_VERSION" \
      "${platforms[@]}" -r requirements.txt >"$scratch/pip.log" 2>&1; then
    cat "$scratch/pip.log" >&2
    exit 1
  fi
  touch "$wheels/.complete"
fi
find "$cache" -maxdepth 1 -name 'wheels-*' ! -name "wheels-$key" -exec rm -rf {} +

# The wheels enter the build context for the build alone (the Containerfile
# keeps them out of the image). --format docker: the OCI format has no
# HEALTHCHECK. --network none: all the build needs is in its context.
step "building $IMAGE"
rm -rf .container-wheels
cp -al "$wheels" .container-wheels 2>/dev/null || cp -a "$wheels" .container-wheels
build() {  # the Containerfile on the base and the wheels; $1: a log, shown on failure
  local log=$1
  shift
  "${PODMAN[@]}" build --format docker --network none "${LIMITS[@]}" --build-arg BASE="$base" \
    --build-arg PIP_FIND_LINKS=.container-wheels --build-arg PIP_NO_INDEX=1 \
    "$@" --file Containerfile . >"$log" 2>&1 || { tail -n 60 "$log" >&2; exit 1; }
}
started=$SECONDS
build "$scratch/build.log" --tag "$IMAGE"
# The venv stage tagged too, so that its layers stay cached when the project's
# old builds go: untagged images of its label (earlier stages, the previous image).
build "$scratch/build-venv.log" --target venv --tag "${IMAGE%:*}:venv"
rm -rf .container-wheels
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "built in $((SECONDS - started)) s: $IMAGE, $((size / 1000000)) MB" >&2

# The proxy: proxy/Containerfile on the base that holds caddy (so, again, no network).
step "building $PROXY_IMAGE"
started=$SECONDS
"${PODMAN[@]}" build --format docker --network none "${LIMITS[@]}" --build-arg BASE="$proxy_base" \
  --tag "$PROXY_IMAGE" --file proxy/Containerfile proxy >"$scratch/build-proxy.log" 2>&1 \
  || { tail -n 60 "$scratch/build-proxy.log" >&2; exit 1; }
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$PROXY_IMAGE")
echo "built in $((SECONDS - started)) s: $PROXY_IMAGE, $((size / 1000000)) MB" >&2
for title in game-stats-api game-stats-proxy; do
  "${PODMAN[@]}" image prune --force --filter "label=org.opencontainers.image.title=$title" \
    >/dev/null
done

step "test_container.py"
CONTAINER_IMAGE=$IMAGE CONTAINER_PROXY_IMAGE=$PROXY_IMAGE \
  .venv/bin/python -m unittest "$@" test_container
