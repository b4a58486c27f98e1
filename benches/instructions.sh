#!/usr/bin/env bash
# benches/instructions.sh: instructions per proxied keep-alive GET, counted by valgrind's
# callgrind, for HAProxy, nginx and Constellation in front of the same nginx backend.
#
# Usage: bash benches/instructions.sh
#
# Instruction counts do not depend on what else the machine is doing, so this is the
# figure to steer the fast path by (requests/s from benches/proxy.sh is what users see).
# Method, the same for all three: start the proxy (one worker/thread) under
# `valgrind --tool=callgrind`, send BENCH_WARM keep-alive GETs, zero the counters
# (`callgrind_control -z`), send BENCH_REQUESTS keep-alive GETs on one connection (curl),
# dump (`callgrind_control -d`) and divide the dump's total by BENCH_REQUESTS. Everything
# the process does in that window counts (timers, health checks, metrics), as it would
# in production. Rewrites the block between `<!-- instructions-bench:start -->` and
# `<!-- instructions-bench:end -->` in docs/benchmarks.md.
#
# Knobs (environment): BENCH_REQUESTS=1000, BENCH_WARM=200, BENCH_OUT=docs/benchmarks.md,
# BENCH_KEEP_TMP=0, BENCH_SKIP_BUILD=0 (1 uses the existing release binary).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${BENCH_REQUESTS:-1000}
WARM=${BENCH_WARM:-200}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
EXTRA_PACKAGES=(valgrind)
# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

# The proxies run under callgrind; their start functions honour RUN_PREFIX.
CALLGRIND=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p.out" --dump-instr=no --collect-atstart=yes)

# curl config: N requests to one URL on one kept-alive connection.
requests_file() { # url n file
    local i
    : >"$3"
    for ((i = 0; i < $2; i++)); do printf 'url = "%s"\noutput = "/dev/null"\n' "$1" >>"$3"; done
}

measure() { # name url pid: prints instructions per request
    local name=$1 url=$2 pid=$3
    requests_file "$url" "$WARM" "$WORK/$name.warm"
    requests_file "$url" "$REQUESTS" "$WORK/$name.req"
    curl -s -K "$WORK/$name.warm" || die "$name: warm-up requests failed"
    callgrind_control -z "$pid" >/dev/null
    local codes
    codes=$(curl -s -w '%{http_code}\n' -K "$WORK/$name.req" | sort | uniq -c | tr -s ' ')
    [[ $codes == " $REQUESTS 200" ]] || die "$name: not every request got a 200: $codes"
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    local total
    total=$(cat "$WORK"/callgrind."$pid".out.* 2>/dev/null | awk '/^totals:/ { t += $2 } /^summary:/ { m += $2 } END { print (t > 0 ? t : m) + 0 }')
    ((total > 0)) || die "$name: no callgrind dump found for pid $pid"
    echo $((total / REQUESTS))
}

DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
alloc_ports BACKEND_PORT P_H P_N P_C A_C
start_backend backend "$BACKEND_PORT" 0
declare -A PER_REQ
RUN_PREFIX=("${CALLGRIND[@]}")
SLOW_START=60
start_haproxy haproxy "$P_H" 1 0 "$BACKEND_PORT"
PER_REQ[haproxy]=$(measure haproxy "http://127.0.0.1:$P_H/" "$PID_haproxy")
stop_pid "$PID_haproxy"
NGINX_SINGLE=1 start_nginx_proxy nginx "$P_N" 1 0 "$BACKEND_PORT"
PER_REQ[nginx]=$(measure nginx "http://127.0.0.1:$P_N/" "$PID_nginx")
stop_pid "$PID_nginx"
start_constellation constellation "$P_C" "$A_C" 1 "$BACKEND_PORT"
PER_REQ[constellation]=$(measure constellation "http://127.0.0.1:$P_C/" "$PID_constellation")
stop_pid "$PID_constellation"
log "instructions per GET: haproxy ${PER_REQ[haproxy]}, nginx ${PER_REQ[nginx]}, constellation ${PER_REQ[constellation]}"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
BLOCK=$WORK/block.md
{
    echo "<!-- instructions-bench:start -->"
    echo "## Instructions per proxied GET (\`benches/instructions.sh\`)"
    echo
    echo "Produced by \`bash benches/instructions.sh\` on $DATE; this block is rewritten by each run."
    echo "Machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1), Linux $(uname -r);"
    echo "$(valgrind --version); $(haproxy -v 2>&1 | head -1); $(nginx -v 2>&1 | head -1);"
    dirty=""
    [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && dirty=" (work tree had uncommitted changes)"
    echo "Constellation git $(git -C "$ROOT" rev-parse --short HEAD)$dirty, release build."
    echo
    echo "Each proxy runs one worker (HAProxy \`nbthread 1\`, nginx \`worker_processes 1\` with"
    echo "\`master_process off\`, Constellation \`[proxy] threads = 1\` with routing, breakers, retries and"
    echo "metrics on) under callgrind, in front of one nginx backend with kept-alive upstream"
    echo "connections. $WARM warm-up GETs, counters zeroed, then $REQUESTS GETs on one kept-alive client"
    echo "connection (curl); the table divides the whole process's instructions in that window by $REQUESTS."
    echo
    echo "| proxy | instructions per GET | × HAProxy |"
    echo "| --- | ---: | ---: |"
    for p in haproxy nginx constellation; do
        echo "| $p | ${PER_REQ[$p]} | $(ratio "${PER_REQ[$p]}" "${PER_REQ[haproxy]}") |"
    done
    echo "<!-- instructions-bench:end -->"
} >"$BLOCK"
replace_block "$OUT" instructions-bench "$BLOCK"
cat "$BLOCK"
