#!/usr/bin/env bash
# Builds the wasmcsi driver image as an OCI archive, without a Docker engine
# or a registry of base images: a minimal Debian root filesystem made from
# packages by mmdebstrap, then the driver and the built-in plugins on top,
# assembled by buildah (vfs storage, private to this run).
#
#   scripts/image.sh [--profile release|debug] [--out FILE]
#
# --profile   which build of the host goes in: release (what `make image`
#             ships; target/release/wasmcsi) or debug (CI's one build
#             profile, target/debug/wasmcsi, debug info stripped). The
#             plugins are always the release wasm. Both must be built first.
# --out       the archive (default target/image/wasmcsi.oci.tar); its image
#             is named after the Dockerfile's `docker build -t` line.
#
# The Dockerfile stays the source of truth for what Docker users get, and
# this script reads it and the same lists:
#   deploy/image/packages        the Debian packages (both builds install them)
#   deploy/image/dpkg-excludes   files dpkg never unpacks (docs, man, locales)
#   Dockerfile                   the Debian suite (FROM debian:SUITE-slim),
#                                ENTRYPOINT, CMD and LABELs
# scripts/test-image.sh checks an archive against the same files.
#
# The root filesystem is cached in $WASMCSI_IMAGE_CACHE (default
# ~/.cache/wasmcsi-image), keyed by the package list, the excludes, the suite
# and this recipe's version, with the downloaded packages; IMAGE_REFRESH=1
# makes it anew (for security updates). IMAGE_MIRROR, when set, is passed to
# mmdebstrap as its mirror (default: Debian's, with updates and security).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile=release
out=target/image/wasmcsi.oci.tar
while [[ $# -gt 0 ]]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: scripts/image.sh [--profile release|debug] [--out FILE]" >&2; exit 2 ;;
    esac
done

fail() { echo "image: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || fail "run as root (mmdebstrap and buildah's vfs storage need it)"
for tool in mmdebstrap buildah python3; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (scripts/setup.sh installs it)"
done

case "$profile" in
    release) host_bin=target/release/wasmcsi ;;
    debug) host_bin=target/debug/wasmcsi ;;
    *) fail "--profile must be release or debug, not $profile" ;;
esac
wasm_dir=target/wasm32-wasip2/release
plugins=(local_dir.wasm xsky_nfs.wasm)
for f in "$host_bin" "${plugins[@]/#/$wasm_dir/}"; do
    [[ -f "$f" ]] || fail "$f is missing: build it first (make release, or make host plugins)"
done

# What the Dockerfile says: the suite, the image's name, its config.
suite="$(sed -n 's/^FROM debian:\([a-z]*\)-slim.*/\1/p' Dockerfile)"
[[ -n "$suite" ]] || fail "no 'FROM debian:SUITE-slim' line in the Dockerfile"
image_ref="$(sed -n 's/^#  *docker build -t \([^ ]*\) .*/\1/p' Dockerfile)"
[[ -n "$image_ref" ]] || fail "no '# docker build -t NAME .' line in the Dockerfile"
mapfile -d '' config_args < <(python3 scripts/dockerfile-config.py --buildah-args Dockerfile)

mapfile -t packages < <(sed 's/#.*//' deploy/image/packages | tr -s ' \t' '\n' | sed '/^$/d')
[[ ${#packages[@]} -gt 0 ]] || fail "deploy/image/packages lists no package"

# 1. The root filesystem, from packages, cached outside the work tree (so a
# fresh clone on the same machine, as CI's, finds it too).
recipe=3   # bump when the mmdebstrap invocation below changes
cache="${WASMCSI_IMAGE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/wasmcsi-image}"
key="$( { echo "recipe $recipe suite $suite arch $(dpkg --print-architecture) mirror ${IMAGE_MIRROR:-}"
          cat deploy/image/packages deploy/image/dpkg-excludes; } | sha256sum | cut -c1-16)"
rootfs="$cache/rootfs-$suite-$key.tar"
mkdir -p "$cache/debs" "$(dirname "$out")"
if [[ -f "$rootfs" && "${IMAGE_REFRESH:-0}" != 1 ]]; then
    echo "image: root filesystem from the cache: $rootfs ($(date -r "$rootfs" -u +%FT%TZ))"
else
    echo "image: making the root filesystem: Debian $suite, variant essential + ${packages[*]}"
    mirror=()
    if [[ -n "${IMAGE_MIRROR:-}" ]]; then mirror=("$IMAGE_MIRROR"); fi
    started=$SECONDS
    # essential: Essential:yes packages only (no apt, no init), then ours
    # with their hard dependencies (no Recommends). merged-usr: the /usr
    # merge by symlinks with usr-is-merged, not the usrmerge package (which
    # brings perl). Downloaded packages are kept in $cache/debs for the next
    # run; dpkg skips its fsyncs while installing. The last hook leaves no
    # apt lists, caches or logs behind. ($1 in a hook is the new root, for
    # mmdebstrap's shell to expand.)
    # shellcheck disable=SC2016
    mmdebstrap --quiet --variant=essential --include="$(IFS=,; echo "${packages[*]}")" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt=deploy/image/dpkg-excludes \
        --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives "$1"/etc/dpkg/dpkg.cfg.d' \
        --setup-hook='echo force-unsafe-io > "$1"/etc/dpkg/dpkg.cfg.d/zz-unsafe-io' \
        --setup-hook="sync-in $cache/debs /var/cache/apt/archives" \
        --customize-hook="sync-out /var/cache/apt/archives $cache/debs" \
        --customize-hook='rm -rf "$1"/etc/dpkg/dpkg.cfg.d/zz-unsafe-io "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/cache/ldconfig/aux-cache "$1"/var/log/* "$1"/var/lib/dpkg/*-old' \
        --format=tar "$suite" "$rootfs.$$.partial" "${mirror[@]}" </dev/null
    mv "$rootfs.$$.partial" "$rootfs"
    # Keep the three newest (a package list tried and reverted costs nothing).
    find "$cache" -maxdepth 1 -name 'rootfs-*.tar' -printf '%T@ %p\n' | sort -rn \
        | tail -n +4 | cut -d' ' -f2- | xargs -r rm -f
    echo "image: root filesystem made in $((SECONDS - started)) s: $rootfs"
fi

# 2. The driver and the plugins, laid out as in the image.
work="$(mktemp -d target/image/build.XXXXXX)"
storage="$work/storage"
bah=(buildah --storage-driver vfs --root "$storage/root" --runroot "$storage/run")
ctr=""
cleanup() {
    if [[ -n "$ctr" ]]; then "${bah[@]}" rm "$ctr" >/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

tree="$work/tree"
mkdir -p "$tree/usr/local/bin" "$tree/plugins/extra"
if [[ "$profile" == debug ]]; then
    # The dev build's debug info is most of its size and no use in an image.
    strip --strip-debug -o "$tree/usr/local/bin/wasmcsi" "$host_bin"
else
    cp "$host_bin" "$tree/usr/local/bin/wasmcsi"
fi
chmod 0755 "$tree/usr/local/bin/wasmcsi"
for p in "${plugins[@]}"; do
    install -m 0644 "$wasm_dir/$p" "$tree/plugins/$p"
done

# 3. The image: the root filesystem, the tree, the Dockerfile's config.
ctr="$("${bah[@]}" from scratch)"
"${bah[@]}" add --quiet "$ctr" "$rootfs" / >/dev/null
"${bah[@]}" copy --quiet --chown 0:0 "$ctr" "$tree" / >/dev/null
"${bah[@]}" config "${config_args[@]}" \
    --created-by "scripts/image.sh --profile $profile" "$ctr"
rm -f "$out"
"${bah[@]}" commit --quiet --identity-label=false --disable-compression=false \
    --format oci "$ctr" "oci-archive:$out:$image_ref" >/dev/null

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
unpacked=$(( $(stat -c %s "$rootfs") + $(du -sb "$tree" | cut -f1) ))
echo "image: $out ($image_ref, host $profile build): $(mib "$(stat -c %s "$out")") compressed, ~$(mib "$unpacked") unpacked"
