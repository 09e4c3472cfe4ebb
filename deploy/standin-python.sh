#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm where no image registry is reachable: Debian bookworm's own
# python3.11 + venv + pip, bootstrapped from the Debian mirror (debootstrap, needs root) and `docker import`ed.
#
#   deploy/standin-python.sh [IMAGE]          # default IMAGE: recipelens/python-standin:3.11-bookworm
#   docker build --build-arg PYTHON_IMAGE=recipelens/python-standin:3.11-bookworm ...
#
# The root filesystem tarball is kept in $RECIPELENS_CACHE (default ~/.cache/recipelens) so a second engine
# on the same machine imports it in seconds; an image already present is left as it is.
set -euo pipefail
image="${1:-recipelens/python-standin:3.11-bookworm}"
docker="${DOCKER:-docker}"
cache="${RECIPELENS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recipelens}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tarball="$cache/base/bookworm-python3.11.tar"

if "$docker" image inspect "$image" >/dev/null 2>&1; then
  echo "stand-in base: $image is present"
  exit 0
fi
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "stand-in base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 3; }
  [ "$(id -u)" = 0 ] || { echo "stand-in base: debootstrap needs root" >&2; exit 3; }
  mkdir -p "$cache/base"
  rootfs="$(mktemp -d "$cache/base/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  chmod 0755 "$rootfs"  # it becomes the image's /: mktemp's 0700 would lock every non-root user out
  start=$SECONDS
  echo "stand-in base: debootstrap bookworm (minbase + python3 python3-venv python3-pip) from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$rootfs" "$mirror" \
    >"$cache/base/debootstrap.log" 2>&1 || { tail -20 "$cache/base/debootstrap.log" >&2; exit 1; }
  # what python:*-slim leaves out too: package caches, docs, man pages, translations
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  ln -sf python3 "$rootfs/usr/bin/python"
  tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  echo "stand-in base: rootfs $(du -sh "$tarball" | cut -f1) in $((SECONDS - start)) s, cached at $tarball"
fi
"$docker" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$image" >/dev/null
echo "stand-in base: imported $image ($("$docker" image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
