#!/usr/bin/env bash
# Installs what building and testing wasmcsi needs on a fresh Debian machine
# with rustup: the wasm target, the node storage tools the driver runs, a
# container registry for the OCI tests, the image tools (mmdebstrap, buildah,
# umoci), the single-node Kubernetes of `make test-kube`, the Kubernetes
# schema validator and the Prometheus text parser. Safe to run again; skips what is there.
set -euo pipefail

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup: run as root (the driver and its tests mount filesystems)" >&2
        exit 1
    fi
}

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

missing=()
for tool in mkfs.xfs:xfsprogs xfs_growfs:xfsprogs mkfs.ext4:e2fsprogs resize2fs:e2fsprogs \
            mkfs.btrfs:btrfs-progs losetup:mount blkid:util-linux \
            docker-registry:docker-registry; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# docker-registry (the CNCF distribution server) is for the OCI tests, which
# start their own on 127.0.0.1; the service the package enables is not wanted.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled docker-registry >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# The driver image without Docker (make image, make test-image): a root
# filesystem from packages, an OCI archive, and unpacking it to test it.
image_tools=()
for tool in mmdebstrap buildah umoci; do
    command -v "$tool" >/dev/null 2>&1 || image_tools+=("$tool")
done
if [ ${#image_tools[@]} -gt 0 ]; then
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${image_tools[@]}" >/dev/null
fi

# The single-node Kubernetes of `make test-kube` (the kit in
# $WASMCSI_SHARED/kube runs these as plain processes). Not the Debian
# kubernetes-client: it is too old and clashes with the kubectl there.
kube_tools=()
for tool in etcd:etcd-server etcdctl:etcd-client containerd:containerd runc:runc ctr:containerd \
            busybox:busybox-static buildah:buildah \
            /usr/lib/cni/loopback:containernetworking-plugins; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || kube_tools+=("${tool##*:}")
done
if [ ${#kube_tools[@]} -gt 0 ]; then
    need_root
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    mapfile -t kube_tools < <(printf '%s\n' "${kube_tools[@]}" | sort -u)
    apt-get install -y -qq "${kube_tools[@]}" >/dev/null
fi

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
# The official Prometheus client's parser checks the driver's /metrics.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check prometheus-client
fi
echo "setup: ready"
