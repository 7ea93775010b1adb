#!/bin/sh
# Managed by Salt (jupyter formula).
# Usage: jupyter-limits-runner --cgroup=PATH [--memory=BYTES] [--cpu=CORES] [--tasks=N] -- CMD...
#
# Where PID 1 is not systemd: put this process into cgroup PATH with these limits
# (cgroup v2, or the v1 memory, cpu and pids hierarchies), then exec CMD. Jupyter and
# every kernel it starts inherit the cgroup; swap is capped at 0 where the kernel
# accounts it. A limit that cannot be set stops the start with a message, so that a
# program never runs without the limits its pillar gives.
set -eu
cgroup= memory= cpu= tasks=
while [ $# -gt 0 ]; do
    case $1 in
        --cgroup=*) cgroup=${1#*=} ;;
        --memory=*) memory=${1#*=} ;;
        --cpu=*) cpu=${1#*=} ;;
        --tasks=*) tasks=${1#*=} ;;
        --) shift; break ;;
        *) echo "jupyter-limits-runner: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$cgroup" ] && [ $# -gt 0 ] || { echo "jupyter-limits-runner: usage: --cgroup=PATH [limits] -- CMD..." >&2; exit 2; }
period=100000
quota=
[ -n "$cpu" ] && quota=$(awk -v c="$cpu" -v p="$period" 'BEGIN { printf "%d", c * p }')

fail() { echo "jupyter-limits-runner: $*" >&2; exit 1; }
put() {  # put VALUE FILE
    printf '%s\n' "$1" > "$2" 2>/dev/null || fail "cannot write $1 to $2"
}

if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    # cgroup v2: enable the controllers down the path, then set the leaf's limits
    dir=/sys/fs/cgroup
    for part in $(echo "$cgroup" | tr / ' '); do
        for ctl in memory cpu pids; do
            grep -qw "$ctl" "$dir/cgroup.subtree_control" || put "+$ctl" "$dir/cgroup.subtree_control"
        done
        dir=$dir/$part
        mkdir -p "$dir" || fail "cannot create $dir"
    done
    [ -n "$memory" ] && put "$memory" "$dir/memory.max" && put 0 "$dir/memory.swap.max"
    [ -n "$quota" ] && put "$quota $period" "$dir/cpu.max"
    [ -n "$tasks" ] && put "$tasks" "$dir/pids.max"
    put $$ "$dir/cgroup.procs"
else
    # cgroup v1: one hierarchy per controller (cpu may be mounted as cpu,cpuacct)
    join() {  # join CONTROLLER: create the cgroup in that hierarchy and enter it
        base=$(awk -v c="$1" '$3 == "cgroup" && ("," $4 ",") ~ ("," c ",") { print $2; exit }' /proc/mounts)
        [ -n "$base" ] || fail "no cgroup v1 hierarchy with the $1 controller"
        dir=$base/$cgroup
        mkdir -p "$dir" || fail "cannot create $dir"
    }
    if [ -n "$memory" ]; then
        join memory
        # memory + swap capped at the same figure: no swap (where the kernel accounts
        # it); memsw may never be below the memory limit, so lift it first
        memsw=$dir/memory.memsw.limit_in_bytes
        [ -e "$memsw" ] && put -1 "$memsw"
        put "$memory" "$dir/memory.limit_in_bytes"
        [ -e "$memsw" ] && put "$memory" "$memsw"
        put $$ "$dir/cgroup.procs"
    fi
    if [ -n "$quota" ]; then
        join cpu
        put "$period" "$dir/cpu.cfs_period_us"
        put "$quota" "$dir/cpu.cfs_quota_us"
        put $$ "$dir/cgroup.procs"
    fi
    if [ -n "$tasks" ]; then
        join pids
        put "$tasks" "$dir/pids.max"
        put $$ "$dir/cgroup.procs"
    fi
fi
exec "$@"
