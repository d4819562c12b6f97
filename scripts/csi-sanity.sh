#!/usr/bin/env bash
# csi-sanity, the CSI community's conformance suite, against the real
# `wasmcsi` binary on a real unix socket, one run per mode:
#   local-dir-image       examples/local-dir.yaml, XFS images on loop devices
#   local-dir-subvolume   the same with the plugin root on a loop-mounted btrfs
#   xsky-nfs-quota-tree   examples/xsky-nfs.yaml against the XMS emulator
#   xsky-nfs-folder       the same, folder mode (Identity and Controller specs:
#                         no NFS client is assumed on the node)
#   tmpfs-py              examples/tmpfs-py.yaml, the Python plugin (built by
#                         `make plugin-py`; without it the mode is skipped
#                         loudly, and fails with CI=true)
# Volume parameters and secrets are the files under tests/sanity/, passed as a
# user would. tests/sanity/<mode>.skip lists specs (regex) not run yet, one a
# line with `# why`. Junit reports land in target/csi-sanity/.
#
# csi-sanity comes from $WASMCSI_SHARED/tools (default ../shared beside the
# repo): absent, the run says so and passes, except in CI (CI=true).
#
#   scripts/csi-sanity.sh [MODE...]        (default: all five)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

shared=${WASMCSI_SHARED:-../shared}
[[ $shared == /* ]] || shared=$repo/$shared
sanity=$shared/tools/csi-sanity
bin=${WASMCSI_BIN:-$repo/target/debug/wasmcsi}
emulator_bin=${XMS_EMULATOR_BIN:-$repo/target/debug/xms-emulator}
wasm_dir=${WASMCSI_PLUGIN_DIR:-$repo/target/wasm32-wasip2/release}
out=$repo/target/csi-sanity
all_modes=(local-dir-image local-dir-subvolume xsky-nfs-quota-tree xsky-nfs-folder tmpfs-py)
modes=("${@:-${all_modes[@]}}")

if [[ ! -x $sanity ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "csi-sanity: $sanity is missing: CI needs it (set WASMCSI_SHARED)" >&2
        exit 1
    fi
    echo "##############################################################" >&2
    echo "NOT CHECKED: CSI conformance (csi-sanity, ${modes[*]}):" >&2
    echo "  $sanity is missing; set WASMCSI_SHARED to the shared reference data" >&2
    echo "##############################################################" >&2
    exit 0
fi
for f in "$bin" "$emulator_bin" "$wasm_dir/local_dir.wasm" "$wasm_dir/xsky_nfs.wasm"; do
    [[ -e $f ]] || { echo "csi-sanity: $f is missing: run make plugins host first" >&2; exit 1; }
done
mkdir -p "$out/cache"

# ---- one mode's scratch state, taken down however the mode ends ----
work="" driver_pid="" emulator_pid=""

cleanup() {
    [[ -n $driver_pid ]] && { kill "$driver_pid" 2>/dev/null || true; wait "$driver_pid" 2>/dev/null || true; }
    [[ -n $emulator_pid ]] && { kill "$emulator_pid" 2>/dev/null || true; wait "$emulator_pid" 2>/dev/null || true; }
    driver_pid="" emulator_pid=""
    [[ -n $work && -d $work ]] || return 0
    # Our mounts only (deepest first), then loop devices backed by our files.
    local point
    for _ in 1 2 3; do
        while read -r point; do
            umount -l "$point" 2>/dev/null || true
        done < <(awk -v w="$work" '$5 == w || index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    done
    local dev file
    while read -r dev file; do
        [[ $file == "$work"/* ]] && losetup -d "$dev" 2>/dev/null || true
    done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)
    rm -rf --one-file-system "$work"
    work=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits for the driver's socket; the driver's log tells why it did not come.
wait_socket() {
    local socket=$1 log=$2
    # The first start compiles the plugin (then cached in target/csi-sanity/cache).
    for _ in $(seq 1 1800); do
        [[ -S $socket ]] && return 0
        kill -0 "$driver_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "csi-sanity: the driver did not start; its log:" >&2
    tail -n 40 "$log" >&2
    return 1
}

# skip_args MODE: one --ginkgo.skip per entry of tests/sanity/MODE.skip.
skip_args() {
    local file=tests/sanity/$1.skip line regex
    [[ -f $file ]] || return 0
    while IFS= read -r line; do
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        regex=${line%%[[:space:]]#*}
        if [[ $regex == "$line" ]]; then
            echo "csi-sanity: $file: every entry needs '# why': $line" >&2
            exit 1
        fi
        regex=${regex%"${regex##*[![:space:]]}"}
        printf -- '--ginkgo.skip=%s\n' "$regex"
    done < "$file"
}

# counts JUNIT: "passed failed skipped" (suite set-up failures count as failed).
counts() {
    python3 - "$1" <<'EOF'
import sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for case in ET.parse(sys.argv[1]).iter("testcase"):
    status = case.get("status", "")
    name = case.get("name", "")
    if status == "passed":
        # Suite set-up and reporting nodes are cases too; specs are [It].
        passed += name.startswith("[It]")
    elif status in ("skipped", "pending"):
        skipped += 1
    else:
        failed += 1
print(passed, failed, skipped)
EOF
}

run_mode() {
    local mode=$1
    work=$(mktemp -d /tmp/wasmcsi-sanity.XXXXXX)
    local kubelet=$work/kubelet root=$work/root socket=$work/csi.sock
    local log=$out/$mode.driver.log report=$out/$mode.junit.xml
    mkdir -p "$kubelet" "$root"
    rm -f "$report"
    local config params secrets=() extra=()
    case $mode in
        local-dir-*)
            config=examples/local-dir.yaml
            if [[ $mode == local-dir-subvolume ]]; then
                truncate -s 16G "$work/btrfs.img"  # sparse; room for the specs' 1 GiB volumes (no overcommit)
                mkfs.btrfs -q "$work/btrfs.img" >/dev/null
                mount -o loop "$work/btrfs.img" "$root"
                btrfs quota enable "$root"
            fi
            LOCAL_DIR_ROOT=$root LOCAL_DIR_MODE=${mode#local-dir-} \
            LOCAL_DIR_WASM=$wasm_dir/local_dir.wasm \
            CSI_ENDPOINT=unix://$socket NODE_ID=sanity-node KUBELET_DIR=$kubelet \
            WASMCSI_CACHE_DIR=$out/cache RUST_LOG=info \
                "$bin" serve --config "$config" >"$log" 2>&1 &
            driver_pid=$!
            ;;
        xsky-nfs-*)
            config=examples/xsky-nfs.yaml
            "$emulator_bin" --listen 127.0.0.1:0 --settle-ms 100 2>"$work/emulator.log" &
            emulator_pid=$!
            local origin=""
            for _ in $(seq 1 100); do
                origin=$(sed -n 's|^xms-emulator: serving \(http://[^/]*\)/v1$|\1|p' "$work/emulator.log" | head -n1)
                [[ -n $origin ]] && break
                sleep 0.1
            done
            [[ -n $origin ]] || { echo "csi-sanity: the XMS emulator did not start" >&2; cat "$work/emulator.log" >&2; return 1; }
            # The plugin settings a deployment feeds from its ConfigMap and
            # Secret: what GetCapacity (no parameters, no secrets in CSI) uses.
            local settings=(XMS_USER=admin XMS_PASSWORD=admin)
            if [[ $mode == xsky-nfs-folder ]]; then
                settings+=(XSKY_MODE=folder XSKY_POOL=data_pool)
            else
                settings+=(XSKY_MODE=quota-tree XSKY_SHARES=127.0.0.1:/sdsfs/csi-fs/)
            fi
            env "${settings[@]}" \
            XMS_ORIGINS=$origin XSKY_NFS_WASM=$wasm_dir/xsky_nfs.wasm XSKY_CALL_BUDGET_SECONDS=30 \
            CSI_ENDPOINT=unix://$socket NODE_ID=sanity-node KUBELET_DIR=$kubelet RUST_LOG=info \
                "$bin" serve --config "$config" >"$log" 2>&1 &
            driver_pid=$!
            secrets=(--csi.secrets=tests/sanity/xsky-nfs.secrets.yaml)
            extra=(--ginkgo.skip='Node Service')
            ;;
        tmpfs-py)
            config=examples/tmpfs-py.yaml
            local wasm=$wasm_dir/tmpfs_py.wasm
            if [[ ! -e $wasm ]]; then
                if [[ ${CI:-} == true ]]; then
                    echo "csi-sanity: $wasm is missing: CI builds it (make plugin-py)" >&2
                    return 1
                fi
                echo "##############################################################" >&2
                echo "NOT CHECKED: csi-sanity tmpfs-py: $wasm is not built (make plugin-py)" >&2
                echo "##############################################################" >&2
                cleanup
                return 0
            fi
            TMPFS_PY_WASM=$wasm TMPFS_MAX_VOLUME_BYTES=4Gi TMPFS_STATE_DIR=$root \
            CSI_ENDPOINT=unix://$socket NODE_ID=sanity-node KUBELET_DIR=$kubelet \
            WASMCSI_CACHE_DIR=$out/cache RUST_LOG=info \
                "$bin" serve --config "$config" >"$log" 2>&1 &
            driver_pid=$!
            ;;
        *) echo "csi-sanity: unknown mode $mode (modes: ${all_modes[*]})" >&2; return 1 ;;
    esac
    params=tests/sanity/$mode.params.yaml
    wait_socket "$socket" "$log" || return 1
    local skips
    skip_args "$mode" >/dev/null
    mapfile -t skips < <(skip_args "$mode")
    local rc=0
    "$sanity" \
        --csi.endpoint="unix://$socket" \
        --csi.mountdir="$kubelet/target" \
        --csi.stagingdir="$kubelet/staging" \
        --csi.testvolumeparameters="$params" \
        "${secrets[@]}" \
        --csi.testvolumesize=$((1 << 30)) \
        --csi.testvolumeexpandsize=$((2 << 30)) \
        --ginkgo.junit-report="$report" \
        --ginkgo.no-color --ginkgo.silence-skips \
        "${extra[@]}" "${skips[@]}" \
        >"$out/$mode.log" 2>&1 || rc=$?
    local passed=0 failed=0 skipped=0
    if [[ -s $report ]]; then
        read -r passed failed skipped < <(counts "$report")
    fi
    # A run that failed without a failed spec (crash, bad flag) is a failure.
    if [[ $rc != 0 && $failed == 0 ]]; then
        failed=1
    fi
    printf '%-22s %3d passed, %d failed, %d skipped (%d listed in tests/sanity/%s.skip)\n' \
        "$mode:" "$passed" "$failed" "$skipped" "${#skips[@]}" "$mode"
    if [[ $failed != 0 ]]; then
        grep -E '^\s*\[FAIL\]|^  \[FAILED\]|^• \[FAILED\]' "$out/$mode.log" | sed 's/^/    /' | head -n 40 || true
        echo "    full output: $out/$mode.log, driver log: $log"
    fi
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    total_skipped=$((total_skipped + skipped))
    cleanup
}

total_passed=0 total_failed=0 total_skipped=0
started=$SECONDS
for mode in "${modes[@]}"; do
    run_mode "$mode" || { total_failed=$((total_failed + 1)); cleanup; }
done
echo "csi-sanity took $((SECONDS - started)) s; junit reports in target/csi-sanity/"
echo "csi-sanity: $total_passed passed, $total_failed failed, $total_skipped skipped"
[[ $total_failed == 0 ]]
