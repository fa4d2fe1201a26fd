#!/usr/bin/env bash
# Builds deploy/Dockerfile's two images with Debian's buildah, as a machine without a
# container daemon can (`buildah bud --isolation chroot --storage-driver vfs`), then runs
# `feral-coordinator --help` and `feral-worker --help` from the built images (`buildah run
# --isolation chroot`). Needs root. Not part of scripts/test.sh: it downloads PyTorch into
# the builder, compiles the workspace there, and vfs keeps a full copy of every layer
# (so no --layers: about 15 GB at the peak under target/image, removed at the end unless
# KEEP=1). The builder stage runs once per image; the second reuses the first's cargo
# cache mount. 30-60 minutes on 2 cores.
#
# BASES=debootstrap: for a machine that reaches the Debian mirror but no image registry,
# first make local stand-ins for the Dockerfile's base images under their registry names:
# debian:bookworm-slim from `debootstrap --variant=minbase bookworm`, and rust:1-bookworm as
# that plus build-essential and this machine's Rust toolchain, laid out as the official
# image lays it out (/usr/local/cargo/bin on PATH). Both carry this machine's extra CA
# certificates (/usr/local/share/ca-certificates: a TLS-inspecting proxy's), with pip told
# to use the system's list, as the host is. The Dockerfile itself is unchanged.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "build-image.sh needs root (buildah with chroot isolation)" >&2; exit 1; }
command -v buildah >/dev/null && command -v debootstrap >/dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah debootstrap
root=$(realpath -m "${IMAGE_ROOT:-target/image}")
mkdir -p "$root"
b() { buildah --storage-driver vfs --root "$root/storage" --runroot "$root/run" "$@"; }
say() { printf '[build-image] %s\n' "$*" >&2; }
pull=true

if [ "${BASES:-registry}" = debootstrap ]; then
  pull=never
  slim=docker.io/library/debian:bookworm-slim rust=docker.io/library/rust:1-bookworm
  if ! b inspect --type image "$slim" >/dev/null 2>&1; then
    say "making $slim with debootstrap"
    rm -rf "$root/rootfs"
    debootstrap --variant=minbase bookworm "$root/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$root/debootstrap.log"
    rm -rf "$root/rootfs/var/lib/apt/lists/"* "$root/rootfs/var/cache/apt/"*.bin
    ctr=$(b from scratch)
    cp -a "$root/rootfs/." "$(b mount "$ctr")/"
    b umount "$ctr" >/dev/null
    b config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
    b commit -q "$ctr" "$slim" >/dev/null
    b rm "$ctr" >/dev/null
    rm -rf "$root/rootfs"
  fi
  if ! b inspect --type image "$rust" >/dev/null 2>&1; then
    toolchain=$(rustc --print sysroot)
    say "making $rust: $slim, build-essential and $(rustc --version)"
    ctr=$(b from --pull=never "$slim")
    b run --isolation chroot "$ctr" -- sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential ca-certificates curl git pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*' >"$root/rust-base.log"
    mnt=$(b mount "$ctr")
    cp /usr/local/share/ca-certificates/*.crt "$mnt/usr/local/share/ca-certificates/" 2>/dev/null || true
    b run --isolation chroot "$ctr" -- update-ca-certificates >>"$root/rust-base.log"
    mkdir -p "$mnt/usr/local/rustup/toolchains" "$mnt/usr/local/cargo/bin"
    cp -a "$toolchain/." "$mnt/usr/local/rustup/toolchains/stable/"
    for tool in cargo rustc rustdoc; do ln -s "../../rustup/toolchains/stable/bin/$tool" "$mnt/usr/local/cargo/bin/$tool"; done
    b umount "$ctr" >/dev/null
    b config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
      --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
      --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    b commit -q "$ctr" "$rust" >/dev/null
    b rm "$ctr" >/dev/null
  fi
fi

for target in worker coordinator; do
  say "building feral-$target (log: $root/bud-$target.log)"
  started=$(date +%s)
  b bud --isolation chroot --pull="$pull" -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore \
    --target "$target" -t "feral-$target" . >"$root/bud-$target.log" 2>&1 ||
    { tail -n 30 "$root/bud-$target.log" >&2; exit 1; }
  say "feral-$target built in $(( $(date +%s) - started )) s"
done
for image in coordinator worker; do
  ctr=$(b from --pull=never "feral-$image")
  say "feral-$image --help, from the image:"
  b run --isolation chroot "$ctr" -- "feral-$image" --help | head -n 8
  b run --isolation chroot "$ctr" -- feral --version
  b rm "$ctr" >/dev/null
done
b images
[ "${KEEP:-0}" = 1 ] || { say "removing $root (KEEP=1 keeps it)"; b rm --all >/dev/null; b rmi --all --force >/dev/null || true; rm -rf "$root"; }
