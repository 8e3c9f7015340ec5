#!/usr/bin/env bash
# Install and start the real components the end-to-end tests use: a Docker
# engine and a Debian base image with Python and sshd (instances of the
# loopback vast.ai server are containers of it). Idempotent; root only.
# Nothing can be pulled here, so the image is built with debootstrap from the
# Debian package mirror and cached as a tarball for the next run.
set -euo pipefail
image="${RUNNER_TEST_IMAGE:-runner-test/debian-sshd:bookworm}"
cache="${RUNNER_CI_CACHE:-/var/cache/runner-ci}"
log="${TMPDIR:-/tmp}/runner-ci-infra.log"
if [ "$(id -u)" != 0 ]; then
  echo "ci-infra: not root, skipping Docker and sshd (their tests will skip)" >&2
  exit 0
fi
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v sshd >/dev/null || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
# Dataset sync to rented hosts is rsync over SSH: it must be on both ends.
command -v rsync >/dev/null || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  echo "ci-infra: installing ${need[*]}" >&2
  apt-get update -qq >>"$log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >>"$log" 2>&1
fi
if ! docker info >/dev/null 2>&1; then
  echo "ci-infra: starting dockerd" >&2
  # vfs works on any filesystem; no iptables or bridge in this sandbox.
  nohup dockerd --storage-driver=vfs --iptables=false --bridge=none >>"$log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "ci-infra: dockerd did not start; see $log" >&2; exit 1; }
fi
# The rootfs's name says what is in it: a change of the package list gets a new name, so
# a cached tarball (or an imported image) without the new packages is not reused.
rootfs="debian-sshd-rsync-bookworm"
have="$(docker image inspect --format '{{ index .Config.Labels "runner.rootfs" }}' "$image" 2>/dev/null || true)"
if [ "$have" != "$rootfs" ]; then
  mkdir -p "$cache"
  tarball="$cache/$rootfs.tar"
  if [ ! -s "$tarball" ]; then
    echo "ci-infra: building $image with debootstrap (about a minute)" >&2
    root="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,python3-venv,openssh-server,procps,coreutils,rsync \
      bookworm "$root" http://deb.debian.org/debian >>"$log" 2>&1
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  docker import --change "LABEL runner.rootfs=$rootfs" "$tarball" "$image" >/dev/null
fi
echo "ci-infra: docker $(docker version --format '{{.Server.Version}}'), image $image ready" >&2
