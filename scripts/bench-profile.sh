#!/usr/bin/env bash
# Where the time of a wasmcsi CSI call goes, per local-dir mode: the release
# driver runs under `strace -f` (stopping only at execve, via seccomp-bpf) on
# a fresh loop-mounted root, `wasmcsi-bench --endpoint` drives one fs row
# against it, and every tool the driver ran is listed with its count per
# cycle and its wall time (execve to exit); so are the driver's own fsyncs
# and unlinks (the plugin's meta.json writes, image removal), with their
# time in the kernel.
#
#   scripts/bench-profile.sh [ROW] [CLIENTS] [SECONDS] [MODES]
#   ROW: create-delete (default), create-expand-delete, stats
#   MODES: comma-separated, default image-xfs,image-ext4,subvolume
#
# PERF=1: instead of strace, run the driver under `perf stat` (counting its
# children too) and print the CPU time per cycle of driver and tools
# together, against the wall time of a cycle.
#
# Run from the repository root, as root, after `make release`. The cycle
# figures under strace are a little slower than without it; compare the
# tools' share, not the absolute rate, with `wasmcsi-bench`.
set -euo pipefail

row=${1:-create-delete}
clients=${2:-1}
seconds=${3:-8}
modes=${4:-image-xfs,image-ext4,subvolume}
bin=${BIN:-target/release}
[[ -x $bin/wasmcsi && -x $bin/wasmcsi-bench ]] || { echo "run make release first (or set BIN=target/debug)" >&2; exit 1; }

scratch=$(mktemp -d /tmp/wasmcsi-profile.XXXXXX)
driver=""
cleanup() {
    set +e
    # Only the driver this script started, by its pid; strace then exits.
    [[ -n $driver ]] && kill "$driver" 2>/dev/null && sleep 0.2
    for _ in 1 2; do
        grep -F " $scratch" /proc/self/mountinfo | awk '{print $5}' | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || true; done
        for dev in /sys/block/loop*; do
            f=$(cat "$dev/loop/backing_file" 2>/dev/null || true)
            [[ $f == "$scratch"/* ]] && losetup -d "/dev/${dev##*/}" 2>/dev/null || true
        done
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

for mode in ${modes//,/ }; do
    base=$scratch/$mode
    mkdir -p "$base/root" "$base/kubelet"
    truncate -s 32G "$base/root.img"
    if [[ $mode == subvolume ]]; then
        mkfs.btrfs -q -f "$base/root.img"
    else
        mkfs.ext4 -q -F "$base/root.img"
    fi
    mount -o loop "$base/root.img" "$base/root"
    [[ $mode == subvolume ]] && btrfs quota enable "$base/root"
    tracer_cmd=(strace -f --seccomp-bpf -q -ttt -T
        -e trace=execve,clone,clone3,vfork,fsync,fdatasync,unlink,unlinkat
        -e signal=none -o "$base/strace")
    # With perf, the driver runs bare and perf attaches once it is up.
    [[ ${PERF:-0} == 1 ]] && tracer_cmd=()
    plugin_mode=image
    [[ $mode == subvolume ]] && plugin_mode=subvolume
    LOCAL_DIR_ROOT=$base/root/local-dir LOCAL_DIR_MODE=$plugin_mode \
    LOCAL_DIR_WASM=target/wasm32-wasip2/release/local_dir.wasm \
    CSI_ENDPOINT=unix://$base/csi.sock NODE_ID=profile KUBELET_DIR=$base/kubelet \
    WASMCSI_CACHE_DIR=$scratch/cache RUST_LOG=warn \
        "${tracer_cmd[@]}" $bin/wasmcsi serve --config examples/local-dir.yaml &
    tracer=$!
    for _ in $(seq 200); do
        if [[ ${PERF:-0} == 1 ]]; then
            driver=$tracer
        else
            driver=$(pgrep -P "$tracer" || true)
        fi
        [[ -n $driver && -S $base/csi.sock ]] && break
        sleep 0.05
    done
    [[ -n $driver ]] || { echo "the driver did not start" >&2; kill "$tracer"; exit 1; }
    perf=""
    if [[ ${PERF:-0} == 1 ]]; then
        # Counts the driver and every child it starts from now on.
        perf stat -x, -e task-clock,context-switches -p "$driver" -o "$base/perf" &
        perf=$!
        sleep 0.2
    fi
    echo "== $mode: $row, $clients client(s), $seconds s, driver under ${tracer_cmd[0]:-perf}" >&2
    $bin/wasmcsi-bench --endpoint "unix://$base/csi.sock" --suites fs --modes "$mode" \
        --fs-rows "$row" --fs-clients "$clients" --seconds "$seconds" \
        --kubelet-dir "$base/kubelet" 2>&1 | tee "$base/bench.out" >&2
    if [[ -n $perf ]]; then
        kill -INT "$perf"
        wait "$perf" || true
    fi
    kill "$driver"
    wait "$tracer" || true
    driver=""
    cycles=$(awk '/ n +[0-9]+/ { for (i = 1; i < NF; i++) if ($i == "n") print $(i + 1); exit }' "$base/bench.out")
    if [[ ${PERF:-0} == 1 ]]; then
        awk -F, -v n="$cycles" -v mode="$mode" -v secs="$seconds" -v clients="$clients" '
            $3 == "task-clock" { printf "%s: %d cycles in %s s, %s client(s): CPU (driver + tools) %.1f ms per cycle, wall %.1f ms per cycle per client\n", mode, n, secs, clients, $1 / n, secs * 1000 * clients / n }
            $3 == "context-switches" { printf "  context switches per cycle: %.0f\n", $1 / n }' "$base/perf"
        umount "$base/root"
        continue
    fi
    python3 - "$base/strace" "$cycles" "$mode" <<'EOF'
import re, statistics, sys
from collections import defaultdict

path, cycles, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spawned = {}        # child pid -> when the driver's clone began
clone_pending = {}  # driver tid -> when its unfinished clone began
exec_started = {}   # pid -> (program, first execve attempt) of a pending execve
execed = {}         # tool pid -> (program, when its execve succeeded)
run = defaultdict(list)    # program -> execve to exit, s
spawn = defaultdict(list)  # program -> clone to successful execve (PATH search included), s
sys_spent = defaultdict(list)
driver_pid = None


def program(rest):
    args = re.findall(r'"((?:[^"\\]|\\.)*)"', rest.split('[', 1)[1].split(']', 1)[0])
    prog = args[0].rsplit('/', 1)[-1]
    # `btrfs -q subvolume delete --commit-after /p` -> btrfs subvolume delete
    words = [a for a in args[1:] if not a.startswith('-') and not a.startswith('/')]
    if prog == 'btrfs':
        return ' '.join([prog] + words[:2])
    if prog == 'losetup':
        return ' '.join([prog] + [a for a in args[1:] if a.startswith('--')][:1])
    return prog


for line in open(path):
    m = re.match(r'(\d+) (\d+\.\d+) (.*)', line)
    if not m:
        continue
    pid, t, rest = m.group(1), float(m.group(2)), m.group(3)
    if re.match(r'(clone3?|vfork)\(', rest):
        done = re.search(r'\) = (\d+) <', rest)
        if done:
            spawned[done.group(1)] = t
        else:
            clone_pending[pid] = t
        continue
    done = re.match(r'<\.\.\. (?:clone3?|vfork) resumed>.*\) = (\d+) <', rest)
    if done:
        spawned[done.group(1)] = clone_pending.pop(pid, t)
        continue
    if rest.startswith('execve('):
        exec_started.setdefault(pid, (program(rest), t))
    if rest.startswith('execve(') or rest.startswith('<... execve resumed>'):
        ok = re.search(r'\) = 0 <(\d+\.\d+)>', rest)
        if not ok or pid not in exec_started:
            continue
        prog, first = exec_started.pop(pid)
        finished = t + float(ok.group(1)) if rest.startswith('execve(') else t
        if driver_pid is None:
            driver_pid = pid
            continue
        execed[pid] = (prog, finished)
        spawn[prog].append(finished - spawned.pop(pid, first))
    elif '+++ exited' in rest:
        if pid in execed:
            prog, began = execed.pop(pid)
            run[prog].append(t - began)
    else:
        call = re.match(r'(?:<\.\.\. )?(\w+)(?:\(| resumed>).*<(\d+\.\d+)>$', rest)
        if call and not rest.endswith('<unfinished ...>'):
            who = f"{execed[pid][0]}: {call.group(1)}" if pid in execed else f"driver: {call.group(1)}"
            sys_spent[who].append(float(call.group(2)))

ms = lambda v: statistics.median(v) * 1e3 if v else float('nan')
print(f"{mode}: {cycles} cycles. Tools the driver ran: count per cycle; p50 of spawning "
      f"(clone to a successful execve, PATH search included) and of running (execve to exit); "
      f"ms per cycle of both")
print(f"  {'tool':<32} {'per cycle':>9} {'spawn p50':>9} {'run p50':>8} {'ms/cycle':>9}")
total = 0.0
for prog in sorted(run, key=lambda p: -sum(run[p]) - sum(spawn[p])):
    per = (sum(run[prog]) + sum(spawn[prog])) / cycles * 1e3
    total += per
    print(f"  {prog:<32} {len(run[prog]) / cycles:>9.2f} {ms(spawn[prog]):>9.2f} "
          f"{ms(run[prog]):>8.2f} {per:>9.2f}")
print(f"  {'all tools':<32} {'':>9} {'':>9} {'':>8} {total:>9.2f}")
print("Syscalls (time in the kernel, strace -T): count per cycle, p50 ms, ms per cycle")
for who, v in sorted(sys_spent.items(), key=lambda kv: -sum(kv[1])):
    print(f"  {who:<32} {len(v) / cycles:>9.2f} {ms(v):>9.2f} {'':>8} {sum(v) / cycles * 1e3:>9.2f}")
EOF
    umount "$base/root"
done
