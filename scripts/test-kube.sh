#!/usr/bin/env bash
# The driver in a real single-node Kubernetes, as a user sees it: the kit in
# $WASMCSI_SHARED/kube (default ../shared; its README) starts kube-apiserver,
# controller-manager, scheduler, a kubelet with containerd, and the real
# csi-provisioner (node-deployment mode, capacity tracking on), csi-resizer
# and node-driver-registrar as plain processes on 127.0.0.1. wasmcsi runs
# beside them as the node plugin (target/debug/wasmcsi serve), once per
# local-dir mode and once for tmpfs-py, each under its own driver name and
# CSIDriver object:
#   image      image.local.wasmcsi.io       XFS images on a plain directory
#   subvolume  subvolume.local.wasmcsi.io   btrfs subvolumes + qgroups on a
#                                           loop-mounted btrfs
#   tmpfs      tmpfs.wasmcsi.io             tmpfs-py (`make plugin-py`; without
#                                           it skipped loudly, failed in CI)
# For each local-dir mode, with kubectl only:
#   flow      PVC (WaitForFirstConsumer) bound, pod Running, PVC patched to a
#             larger size, the pod sees it (df) and a write past it is refused
#             (ENOSPC/EDQUOT); after the pod and the PVC are deleted, the PV,
#             the volume under the plugin root, its loop device and mounts are gone
#   capacity  CSIStorageCapacity objects appear for node localhost; a pod
#             whose PVC asks more than they say stays Pending with the
#             scheduler's reason while the flow's pod runs
# and for every driver:
#   inline    a pod with an inline ephemeral volume (csi: volumeAttributes:
#             size) sees that size, is refused past it, and after the pod is
#             deleted the volume and its mount are gone
#
# Everything it starts it stops: the drivers by PID, the cluster with
# `kit down --wipe` (its logs are kept in target/kube-kit/logs), mounts and
# loop devices under its own scratch directory. Without the kit it says SKIP
# and passes, except in CI (CI=true), where it fails.
#
#   scripts/test-kube.sh            (make test-kube)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

shared=${WASMCSI_SHARED:-../shared}
[[ $shared == /* ]] || shared=$repo/$shared
kit=$shared/kube/kit
bin=${WASMCSI_BIN:-$repo/target/debug/wasmcsi}
wasm_dir=${WASMCSI_PLUGIN_DIR:-$repo/target/wasm32-wasip2/release}
node=localhost
kubelet_dir=/var/lib/kubelet
topology_key=topology.wasmcsi.io/node
namespace=default

say() { echo "[test-kube $(date +%T)] $*"; }
fail() {
    echo "[test-kube $(date +%T)] FAILED: $*" >&2
    step="${step:+$step: }$*"
    exit 1
}

if [[ ! -x $kit ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "test-kube: $kit is missing: CI needs it (set WASMCSI_SHARED)" >&2
        exit 1
    fi
    echo "##############################################################" >&2
    echo "SKIPPED: the driver in Kubernetes (make test-kube):" >&2
    echo "  $kit is missing; set WASMCSI_SHARED to the shared reference data" >&2
    echo "##############################################################" >&2
    exit 0
fi
for f in "$bin" "$wasm_dir/local_dir.wasm"; do
    [[ -e $f ]] || fail "$f is missing: run make plugins host first"
done
for tool in etcd etcdctl containerd runc ctr buildah kubectl mkfs.btrfs python3; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run scripts/setup.sh"
done
[[ $(id -u) == 0 ]] || fail "run as root (a kubelet, loop devices, mounts)"
# One cluster per machine: its ports are fixed.
if ss -Hltn 'sport = :6443' | grep -q .; then
    fail "something listens on 127.0.0.1:6443: another cluster runs here"
fi

export KUBE_KIT_HOME=$repo/target/kube-kit
export PEER_NODE=$node KUBELET_DIR=$kubelet_dir
# The pod sees an online expansion within one kubelet sync.
export PEER_KUBELET_SYNC=10s
# Our own StorageClasses (WaitForFirstConsumer), not the kit's Immediate one.
export PEER_NO_SC=1
# Capacity tracking as deploy/local-dir runs it, except the owner: these
# sidecars are no pod, so the objects have none (-1) and the test deletes them.
export NAMESPACE=$namespace
export PEER_PROVISIONER_ARGS="--feature-gates=Topology=true --strict-topology=true \
--enable-capacity --capacity-ownerref-level=-1 --capacity-poll-interval=5s"
# The cluster's state (etcd, containerd's images and snapshots, the kubelet's
# pods) lives on a filesystem of the test's own (see below), whatever the
# checkout sits on; its logs are copied here when the test ends.
kept_logs=$KUBE_KIT_HOME/logs
mkdir -p "$KUBE_KIT_HOME/wasm-cache"

# ---- what the test started, taken down however it ends ----
work="" driver_pids=() driver_names=() cluster_started=0 step="" logs=""

# The last lines of the cluster's logs that say why a step failed.
failure_logs() {
    local f
    for f in etcd kube-apiserver containerd kubelet kube-scheduler; do
        [[ -s $logs/$f.log ]] || continue
        # Past the control plane's start, its own logs are noise here.
        [[ $f == etcd || $f == kube-apiserver ]] && [[ $step != "kit up"* ]] && continue
        echo "    --- $f.log (last warnings and errors) ---"
        grep -vE '^I[0-9]{4} |level=info|poststarthook' "$logs/$f.log" | tail -n 12 | cut -c1-300 | sed 's/^/    /'
    done
    for f in "$logs"/wasmcsi-*.log; do
        [[ -s $f ]] || continue
        echo "    --- $(basename "$f") (last lines) ---"
        tail -n 8 "$f" | cut -c1-300 | sed 's/^/    /'
    done
}

cleanup() {
    local rc=$?
    set +e
    if [[ $cluster_started == 1 ]]; then
        # kubectl has the cluster only once `kit env` was read.
        if [[ $rc != 0 && -n ${KUBECONFIG:-} ]]; then
            say "state at the failure:"
            kubectl get pods,pvc,pv,csistoragecapacities -A -o wide 2>&1 | sed 's/^/    /'
            kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 25 | sed 's/^/    /'
        fi
        "$kit" down --wipe 2>&1 | sed 's/^/    /'
    fi
    if [[ -n $logs && -d $logs ]]; then
        rm -rf "$kept_logs" && cp -a "$logs" "$kept_logs"
    fi
    local pid
    for pid in "${driver_pids[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    local name
    for name in "${driver_names[@]}"; do
        rm -rf "${kubelet_dir:?}/plugins/$name" "$kubelet_dir/plugins_registry/$name-reg.sock"
    done
    if [[ -n $work && -d $work ]]; then
        local point dev file
        for _ in 1 2 3; do
            while read -r point; do
                umount -l "$point" 2>/dev/null
            done < <(awk -v w="$work" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
        done
        while read -r dev file; do
            [[ $file == "$work"/* ]] && losetup -d "$dev" 2>/dev/null
        done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)
        rm -rf --one-file-system "$work"
    fi
    # Last, so that it ends the output CI shows: what failed, and why.
    if [[ $rc != 0 ]]; then
        say "FAILED at: ${step:-the start}; logs kept in $kept_logs"
        logs=$kept_logs
        local sub
        for sub in up node; do
            [[ $step == "kit $sub"* && -s $logs/kit-$sub.out ]] || continue
            echo "    --- kit $sub (last lines) ---"
            tail -n 15 "$logs/kit-$sub.out" | cut -c1-300 | sed 's/^/    /'
        done
        failure_logs
        # Where the checkout and the scratch space live, and their room.
        df -hT "$repo" /var/tmp 2>/dev/null | sed 's/^/    /'
    fi
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS DESC CMD...: until CMD succeeds.
wait_for() {
    local limit=$1 desc=$2 end
    shift 2
    end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || fail "timed out after ${limit}s waiting for $desc"
        sleep 1
    done
}

# bytes QUANTITY: a Kubernetes quantity (as the API writes them) in bytes.
bytes() {
    python3 - "$1" <<'EOF'
import re, sys
units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
m = re.fullmatch(r"(\d+)([a-zA-Z]*)", sys.argv[1])
print(int(m.group(1)) * units[m.group(2)])
EOF
}

# ---- the drivers ----
sock_of() { echo "$kubelet_dir/plugins/$1/csi.sock"; }

driver_section() { # driver_section NAME
    cat <<EOF
driver:
  name: $1
  nodeId: $node
  endpoint: unix://$(sock_of "$1")
  services: [controller, node]
  topologyKey: $topology_key
runtime:
  cacheDir: $KUBE_KIT_HOME/wasm-cache
  watchIntervalMs: 0
EOF
}

local_dir_config() { # local_dir_config NAME MODE ROOT: local-dir, inline volumes on
    driver_section "$1"
    cat <<EOF
plugins:
  - name: local-dir
    path: $wasm_dir/local_dir.wasm
    inlineVolumes: true
    settings: { mode: $2, fsType: xfs }
    capabilities:
      fs: { root: "$3" }
      quota: { enableBtrfsQuotas: true }
      mount: { types: [xfs, ext4], targetPrefixes: ["$kubelet_dir"] }
      log: {}
EOF
}

tmpfs_config() { # tmpfs_config NAME STATE-DIR: tmpfs-py, inline volumes only
    driver_section "$1"
    cat <<EOF
plugins:
  - name: tmpfs
    path: $wasm_dir/tmpfs_py.wasm
    inlineVolumes: true
    settings: { maxVolumeBytes: 256Mi }
    limits: { memoryBytes: 33554432, callTimeoutSeconds: 30 }
    capabilities:
      fs: { root: "$2" }
      mount: { types: [tmpfs], targetPrefixes: ["$kubelet_dir"] }
      log: {}
EOF
}

# csidriver NAME STORAGE-CAPACITY MODES: the CSIDriver object, as
# deploy/local-dir has it (no attach; capacity tracking; lifecycle modes).
csidriver() {
    kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: { name: $1 }
spec:
  attachRequired: false
  podInfoOnMount: true
  storageCapacity: $2
  volumeLifecycleModes: $3
  fsGroupPolicy: File
EOF
}

# start_driver NAME CONFIG-FILE: wasmcsi as node plugin NAME, its sidecars.
start_driver() {
    local name=$1 config=$2
    local sock
    step="starting driver $name"
    sock=$(sock_of "$name")
    mkdir -p "$(dirname "$sock")"
    driver_names+=("$name")
    RUST_LOG=info "$bin" serve --config "$config" >"$logs/wasmcsi-$name.log" 2>&1 &
    driver_pids+=($!)
    # A plugin not yet in the compile cache is compiled first: a Python
    # plugin takes ~20 s on a quiet machine, minutes on a busy one.
    for _ in $(seq 1 3000); do
        [[ -S $sock ]] && break
        kill -0 "${driver_pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    [[ -S $sock ]] || { tail -n 30 "$logs/wasmcsi-$name.log" >&2; fail "driver $name did not start"; }
    "$kit" sidecars "$sock" "$name" 2>&1 | sed 's/^/    /'
    # Registered with the kubelet: the node carries the driver's topology.
    wait_for 60 "driver $name in CSINode $node" \
        sh -c "kubectl get csinode $node -o jsonpath='{.spec.drivers[*].name}' | grep -qw '$name'"
    say "driver $name registered on node $node"
}

storage_class() { # storage_class NAME DRIVER MODE
    local fstype=""
    # A subvolume is a btrfs directory: no filesystem type to choose.
    [[ $3 == image ]] && fstype="csi.storage.k8s.io/fstype: xfs"
    kubectl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: { name: $1 }
provisioner: $2
parameters:
  mode: $3
  $fstype
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
EOF
}

claim_and_pod() { # claim_and_pod NAME CLASS SIZE: a PVC and a pod mounting it at /data
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: { name: $1, namespace: $namespace }
spec:
  storageClassName: $2
  accessModes: [ReadWriteOnce]
  resources: { requests: { storage: "$3" } }
---
apiVersion: v1
kind: Pod
metadata: { name: $1, namespace: $namespace }
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: peer.local/busybox:1
      imagePullPolicy: Never
      command: [sleep, "3600"]
      volumeMounts: [{ name: data, mountPath: /data }]
  volumes:
    - name: data
      persistentVolumeClaim: { claimName: $1 }
EOF
}

pod_df_kib() { # the size of /data in the pod, KiB
    kubectl exec -n "$namespace" "$1" -- df -kP /data | awk 'NR == 2 { print $2 }'
}

# The storage capacity object of CLASS on this node: its capacity, or nothing.
capacity_of() {
    kubectl get csistoragecapacities -n "$namespace" -o json | python3 -c '
import json, sys
cls, key, node = sys.argv[1:]
for o in json.load(sys.stdin)["items"]:
    labels = (o.get("nodeTopology") or {}).get("matchLabels") or {}
    if o.get("storageClassName") == cls and labels.get(key) == node and o.get("capacity"):
        print(o["capacity"])
' "$1" "$topology_key" "$node"
}

has_capacity() { [[ -n $(capacity_of "$1") ]]; }
df_above() { (($(pod_df_kib "$1") > $2)); }
pvc_capacity_is() { [[ $(kubectl get pvc -n "$namespace" "$1" -o jsonpath='{.status.capacity.storage}') == "$2" ]]; }
gone() { ! kubectl get "$1" "$2" >/dev/null 2>&1; }

scheduler_refused() { # scheduler_refused POD: the scheduler's FailedScheduling says why
    kubectl get events -n "$namespace" --field-selector "involvedObject.name=$1,reason=FailedScheduling" \
        -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -q 'did not have enough free storage'
}

# check_mode MODE DRIVER ROOT OLD NEW: the flow and capacity tracking.
check_mode() {
    local mode=$1 driver=$2 root=$3 old=$4 new=$5
    local class=wasmcsi-$mode pod=flow-$mode big=too-big-$mode t0
    step="$mode: PVC flow and capacity tracking"
    storage_class "$class" "$driver" "$mode"

    # Capacity: the provisioner publishes what GetCapacity says for the class.
    t0=$SECONDS
    wait_for 60 "a CSIStorageCapacity of $class on $node" has_capacity "$class"
    local capacity capacity_bytes
    capacity=$(capacity_of "$class")
    capacity_bytes=$(bytes "$capacity")
    say "$mode: CSIStorageCapacity for $class on $node: $capacity ($((capacity_bytes >> 20)) MiB), after $((SECONDS - t0)) s"

    # A claim twice that big cannot fit: its pod stays Pending, and says why.
    claim_and_pod "$big" "$class" "$((capacity_bytes * 2 / 1048576 + 1))Mi"
    t0=$SECONDS
    claim_and_pod "$pod" "$class" "$old"
    kubectl wait -n "$namespace" --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null
    local pv
    pv=$(kubectl get pvc -n "$namespace" "$pod" -o jsonpath='{.spec.volumeName}')
    [[ $(kubectl get pvc -n "$namespace" "$pod" -o jsonpath='{.status.phase}') == Bound ]] || fail "$pod: PVC not Bound"
    say "$mode: PVC $pod ($old) Bound to $pv, pod Running after $((SECONDS - t0)) s"
    wait_for 60 "the scheduler's reason for $big" scheduler_refused "$big"
    [[ $(kubectl get pod -n "$namespace" "$big" -o jsonpath='{.status.phase}') == Pending ]] || fail "$big is not Pending"
    [[ -z $(kubectl get pvc -n "$namespace" "$big" -o jsonpath='{.spec.volumeName}') ]] || fail "$big got a volume"
    say "$mode: pod $big (PVC $((capacity_bytes * 2 / 1048576 + 1))Mi) Pending: $(kubectl get events -n "$namespace" \
        --field-selector "involvedObject.name=$big,reason=FailedScheduling" -o jsonpath='{.items[-1:].message}')"

    # The volume is really there: under the plugin root, at the pod's /data.
    local before after
    before=$(pod_df_kib "$pod")
    [[ -n $(ls -A "$root/volumes") ]] || fail "$mode: nothing under $root/volumes"

    # Expand online: the pod sees the new size without a restart. An
    # image's filesystem grows, so df shows it; a subvolume's qgroup limit
    # does not show in df (the whole btrfs does): there the writes below
    # show it, past the old size.
    t0=$SECONDS
    kubectl patch pvc -n "$namespace" "$pod" --type=merge -p "{\"spec\":{\"resources\":{\"requests\":{\"storage\":\"$new\"}}}}" >/dev/null
    wait_for 120 "PVC $pod status capacity $new (NodeExpandVolume done)" pvc_capacity_is "$pod" "$new"
    if [[ $mode == image ]]; then
        wait_for 120 "pod $pod to see /data grown from $before KiB" df_above "$pod" "$before"
    fi
    after=$(pod_df_kib "$pod")
    say "$mode: PVC patched $old -> $new, status $new; the pod's df: $before KiB -> $after KiB after $((SECONDS - t0)) s"

    # Refused past the new size, not before: fill until the kernel says no.
    local out written new_bytes old_bytes
    # shellcheck disable=SC2016 # expanded in the pod
    out=$(kubectl exec -n "$namespace" "$pod" -- sh -c 'dd if=/dev/zero of=/data/fill bs=1M conv=fsync 2>&1; echo "size=$(wc -c < /data/fill)"' || true)
    written=$(sed -n 's/^size=//p' <<<"$out")
    new_bytes=$(bytes "$new") old_bytes=$(bytes "$old")
    grep -qE 'No space left on device|Disk quota exceeded' <<<"$out" || fail "$mode: the write past $new was not refused: $out"
    ((written > old_bytes && written <= new_bytes)) || fail "$mode: wrote $written bytes; expected more than $old and at most $new"
    say "$mode: wrote $((written >> 20)) MiB into $new, then: $(grep -oE 'No space left on device|Disk quota exceeded' <<<"$out" | head -n1)"

    # Everything goes with the PVC.
    t0=$SECONDS
    kubectl delete pod -n "$namespace" "$pod" "$big" --wait=true --timeout=60s >/dev/null
    kubectl delete pvc -n "$namespace" "$pod" "$big" --wait=true --timeout=60s >/dev/null
    wait_for 60 "PV $pv to be deleted" gone pv "$pv"
    [[ -z $(ls -A "$root/volumes") ]] || fail "$mode: left under $root/volumes: $(ls -A "$root/volumes")"
    ! grep -q "$pv" /proc/self/mountinfo || fail "$mode: $pv is still mounted"
    ! losetup -n -l -O BACK-FILE | grep -q "^$root/" || fail "$mode: a loop device still backs a file under $root"
    say "$mode: pod and PVC deleted: PV, volume, mounts and loop devices gone after $((SECONDS - t0)) s"
    kubectl delete storageclass "$class" >/dev/null
}

# check_inline DRIVER SIZE ROOT: a pod with an inline volume of DRIVER.
# ROOT: where the plugin keeps volumes (local-dir), to see them go; or "".
check_inline() {
    local driver=$1 size=$2 root=$3
    local pod=inline-${driver%%.*} t0 uid
    step="inline volume of $driver"
    t0=$SECONDS
    kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: { name: $pod, namespace: $namespace }
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: peer.local/busybox:1
      imagePullPolicy: Never
      command: [sleep, "3600"]
      volumeMounts: [{ name: scratch, mountPath: /data }]
  volumes:
    - name: scratch
      csi:
        driver: $driver
        volumeAttributes: { size: "$size" }
EOF
    kubectl wait -n "$namespace" --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null
    uid=$(kubectl get pod -n "$namespace" "$pod" -o jsonpath='{.metadata.uid}')
    local target=$kubelet_dir/pods/$uid/volumes/kubernetes.io~csi/scratch/mount
    grep -q " $target " /proc/self/mountinfo || fail "$pod: nothing mounted at $target"
    [[ -z $root || -n $(ls -A "$root/volumes") ]] || fail "$pod: no volume under $root/volumes"
    local kib size_bytes
    kib=$(pod_df_kib "$pod") size_bytes=$(bytes "$size")
    # (A subvolume's df is the whole btrfs: its limit shows in the writes.)
    [[ $driver == subvolume.* ]] || ((kib * 1024 <= size_bytes && kib * 1024 > size_bytes / 2)) \
        || fail "$pod: df says $kib KiB for $size"
    say "inline $driver: pod $pod Running with a $size volume (df: $kib KiB) after $((SECONDS - t0)) s"
    local out written
    # shellcheck disable=SC2016 # expanded in the pod
    out=$(kubectl exec -n "$namespace" "$pod" -- sh -c 'dd if=/dev/zero of=/data/fill bs=1M conv=fsync 2>&1; echo "size=$(wc -c < /data/fill)"' || true)
    written=$(sed -n 's/^size=//p' <<<"$out")
    grep -qE 'No space left on device|Disk quota exceeded' <<<"$out" || fail "$pod: the write past $size was not refused: $out"
    ((written <= size_bytes && written > size_bytes / 2)) || fail "$pod: wrote $written bytes into $size"
    say "inline $driver: wrote $((written >> 20)) MiB into $size, then: $(grep -oE 'No space left on device|Disk quota exceeded' <<<"$out" | head -n1)"
    t0=$SECONDS
    kubectl delete pod -n "$namespace" "$pod" --wait=true --timeout=60s >/dev/null
    ! grep -q " $target " /proc/self/mountinfo || fail "$pod: $target still mounted"
    [[ -z $root || -z $(ls -A "$root/volumes") ]] || fail "$pod: left under $root/volumes: $(ls -A "$root/volumes")"
    [[ -z $root ]] || ! losetup -n -l -O BACK-FILE | grep -q "^$root/" || fail "$pod: a loop device still backs a file under $root"
    say "inline $driver: pod deleted: its volume and mount gone after $((SECONDS - t0)) s"
}

started=$SECONDS
work=$(mktemp -d /var/tmp/wasmcsi-kube.XXXXXX)
# The cluster's state on an ext4 of its own: containerd's overlayfs
# snapshots and buildah's storage need a filesystem that can hold them,
# and a checkout may sit on one that cannot (overlayfs, a network or
# shared folder).
step="making the cluster's filesystem"
truncate -s 8G "$work/cluster.img"
mkfs.ext4 -q -F "$work/cluster.img"
mkdir -p "$work/cluster"
mount -o loop "$work/cluster.img" "$work/cluster"
export PEER_RUN=$work/cluster/run
logs=$PEER_RUN/logs
mkdir -p "$logs"
say "starting the cluster (kit: $kit, binaries: $KUBE_KIT_HOME/bin, state: $PEER_RUN)"
cluster_started=1
# kit SUBCOMMAND: a kit step, its output shown and kept for the failure summary.
kit_step() { "$kit" "$1" 2>&1 | tee -a "$logs/kit-$1.out" | sed 's/^/    /'; }
step="kit up (etcd, kube-apiserver, kube-controller-manager)"
kit_step up
step="kit node (containerd, images, kube-scheduler, kubelet)"
# The node's first start builds and imports two images and waits for the
# kubelet; on a busy machine a wait can run out. A second try picks up
# where the first stopped (the kit is idempotent); the first failure is
# shown, not hidden.
if ! kit_step node; then
    say "kit node failed once; its logs:"
    failure_logs
    say "trying kit node again"
    kit_step node
fi
eval "$("$kit" env)"

mkdir -p "$work/image-root" "$work/btrfs-root" "$work/tmpfs-state"
truncate -s 2G "$work/btrfs.img"
mkfs.btrfs -q "$work/btrfs.img" >/dev/null
mount -o loop "$work/btrfs.img" "$work/btrfs-root"
for mode in image subvolume; do
    name=$mode.local.wasmcsi.io
    csidriver "$name" true "[Persistent, Ephemeral]"
    root=$work/image-root
    [[ $mode == subvolume ]] && root=$work/btrfs-root
    local_dir_config "$name" "$mode" "$root" >"$work/$name.yaml"
    start_driver "$name" "$work/$name.yaml"
done
tmpfs=0
if [[ -e $wasm_dir/tmpfs_py.wasm ]]; then
    tmpfs=1
    csidriver tmpfs.wasmcsi.io false "[Ephemeral]"
    tmpfs_config tmpfs.wasmcsi.io "$work/tmpfs-state" >"$work/tmpfs.yaml"
    # No GetCapacity, no PVCs: no capacity tracking for it.
    PEER_PROVISIONER_ARGS="" start_driver tmpfs.wasmcsi.io "$work/tmpfs.yaml"
elif [[ ${CI:-} == true ]]; then
    fail "$wasm_dir/tmpfs_py.wasm is missing: CI builds it (make plugin-py)"
else
    echo "##############################################################" >&2
    echo "SKIPPING the tmpfs-py inline volume: $wasm_dir/tmpfs_py.wasm is not built (make plugin-py)" >&2
    echo "##############################################################" >&2
fi
say "cluster and drivers up after $((SECONDS - started)) s"

check_mode image image.local.wasmcsi.io "$work/image-root" 320Mi 480Mi
check_mode subvolume subvolume.local.wasmcsi.io "$work/btrfs-root" 64Mi 128Mi
check_inline image.local.wasmcsi.io 320Mi "$work/image-root"
check_inline subvolume.local.wasmcsi.io 64Mi "$work/btrfs-root"
if [[ $tmpfs == 1 ]]; then
    check_inline tmpfs.wasmcsi.io 16Mi ""
fi

step=""
say "passed in $((SECONDS - started)) s"
