#!/usr/bin/env bash
# Local stand-ins for the official images, for a machine that reaches Debian's package
# archive but no image registry. Needs root, docker and debootstrap.
#
#   deploy/local-images.sh > .env         # docker compose reads .env beside the compose file
#   eval "export $(deploy/local-images.sh | tr '\n' ' ')"
#
# Builds, each only when missing (the tags carry a hash of this recipe, so a cached image is
# reused until the recipe, the mirror or the suite changes):
#   harvest-local/python      Debian bookworm minbase + python3 + python3-venv (debootstrap,
#                             then `docker import`): the Dockerfile's BASE_IMAGE
#   harvest-local/redis       that base + Debian's redis-server (deploy/local/redis.Dockerfile)
#   harvest-local/prometheus  that base + Debian's prometheus (deploy/local/prometheus.Dockerfile)
#   harvest-local/alertmanager  that base + Debian's prometheus-alertmanager
#                             (deploy/local/alertmanager.Dockerfile)
# and prints HARVEST_BASE_IMAGE=, REDIS_IMAGE=, PROMETHEUS_IMAGE= and ALERTMANAGER_IMAGE=
# lines on stdout (all progress goes to stderr). harvest-local images of another recipe
# are removed once they are a day old. No Grafana: Debian does not package it
# (GRAFANA_IMAGE stays the official image, which needs a registry).
#
# DEBIAN_MIRROR overrides the mirror (default: the Debian mirror apt is configured with).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=${DEBIAN_SUITE:-bookworm}

say() { echo "local-images: $*" >&2; }
die() { say "$*"; exit 1; }

apt_mirror() {
    # the first http(s) URI of a Debian (not -security) source apt uses, else deb.debian.org
    local uri
    uri=$(
        {
            grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
            grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                | awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}'
        } | grep -E '/debian/?$' | head -n 1
    ) || true
    echo "${uri:-http://deb.debian.org/debian}"
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror)}

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first)"

key=$(cat "$0" "$here"/local/*.Dockerfile <(echo "$mirror $suite") | sha256sum | cut -c1-12)
base=harvest-local/python:3-$suite-$key
redis=harvest-local/redis:7.0-$suite-$key
prometheus=harvest-local/prometheus:2.42-$suite-$key
alertmanager=harvest-local/alertmanager:0.25-$suite-$key

have() { docker image inspect "$1" >/dev/null 2>&1; }

build_base() {
    have "$base" && return
    [[ $(id -u) == 0 ]] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    local root
    root=$(mktemp -d /var/tmp/harvest-local-root.XXXXXX)
    # shellcheck disable=SC2064  # expand $root now
    trap "rm -rf '$root'" RETURN
    say "debootstrap $suite (minbase + python3, python3-venv) from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$root" "$mirror" \
        >&2 || die "debootstrap failed"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/*
    say "docker import -> $base"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$base" >/dev/null
}

build_on_base() { # image dockerfile
    have "$1" && return
    say "docker build -> $1"
    docker build --quiet --build-arg "BASE=$base" -t "$1" -f "$2" "$here/local" >&2
}

remove_other_recipes() {
    # only those a day old: a younger one may belong to a run of another checkout (another
    # recipe) that uses this engine right now
    local ref created cutoff
    cutoff=$(date -u -d '1 day ago' +%s)
    for ref in $(docker image ls --format '{{.Repository}}:{{.Tag}}' | grep '^harvest-local/'); do
        case "$ref" in "$base" | "$redis" | "$prometheus" | "$alertmanager") continue ;; esac
        created=$(docker image inspect --format '{{.Created}}' "$ref") || continue
        (($(date -u -d "$created" +%s) < cutoff)) || continue
        docker image rm "$ref" >/dev/null || true
    done
}

# one builder at a time on this machine (two test runs may start together)
exec 9>/tmp/harvest-local-images.lock
flock 9
build_base
build_on_base "$redis" "$here/local/redis.Dockerfile"
build_on_base "$prometheus" "$here/local/prometheus.Dockerfile"
build_on_base "$alertmanager" "$here/local/alertmanager.Dockerfile"
remove_other_recipes
echo "HARVEST_BASE_IMAGE=$base"
echo "REDIS_IMAGE=$redis"
echo "PROMETHEUS_IMAGE=$prometheus"
echo "ALERTMANAGER_IMAGE=$alertmanager"
