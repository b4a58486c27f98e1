#!/usr/bin/env bash
# benches/tcp.sh: Constellation's TCP routing vs. HAProxy (`mode tcp`) vs. nginx
# (`stream`) in front of one redis-server on loopback, with redis-benchmark as the load:
# keep-alive SET/GET requests/s (50 connections), and new connections/s (`-k 0`: every
# request on a new connection, which measures accept, routing and the upstream connect).
# redis-server answered directly is the ceiling.
#
# Usage: bash benches/tcp.sh
#
# It installs what it needs (haproxy, nginx-light with libnginx-mod-stream,
# redis-server/redis-tools) with apt-get, builds `constellation` in release mode
# (honours CARGO_TARGET_DIR), and rewrites the block between `<!-- tcp-bench:start -->`
# and `<!-- tcp-bench:end -->` in docs/benchmarks.md.
#
# Knobs (environment):
#   BENCH_ROUNDS=3       measured rounds (targets rotated per round); medians are reported
#   BENCH_REQUESTS=200000 requests per keep-alive run
#   BENCH_CONN_REQUESTS=20000 requests per new-connection run
#   BENCH_CONNS=50       redis-benchmark clients
#   BENCH_THREADS=1      workers/threads per proxy
#   BENCH_OUT=docs/benchmarks.md
#   BENCH_KEEP_TMP=0, BENCH_SKIP_BUILD=0 as in benches/proxy.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-3}
REQUESTS=${BENCH_REQUESTS:-200000}
CONN_REQUESTS=${BENCH_CONN_REQUESTS:-20000}
CONNS=${BENCH_CONNS:-50}
THREADS=${BENCH_THREADS:-1}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
TARGETS=(direct haproxy nginx constellation)
EXTRA_PACKAGES=(redis-server)

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
if [[ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]]; then
    log "installing libnginx-mod-stream"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream >/dev/null
fi
command -v redis-benchmark >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null

bench_facts
REDIS_V=$(redis-server --version | awk '{print $3}')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
CMDLINE="bash benches/tcp.sh"
for v in BENCH_ROUNDS BENCH_REQUESTS BENCH_CONN_REQUESTS BENCH_CONNS BENCH_THREADS; do
    [[ -n ${!v:-} ]] && CMDLINE="$v=\"${!v}\" $CMDLINE"
done
mkdir -p "$WORK/results"

alloc_ports R P_H P_N P_C A_C P_W

launch redis "$WORK/redis.log" redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no

mkdir -p "$WORK/haproxy"
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread $THREADS
    maxconn 8192

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s

frontend fe
    bind 127.0.0.1:$P_H
    default_backend be

backend be
    server s1 127.0.0.1:$R
EOF
haproxy -c -q -f "$WORK/haproxy/haproxy.cfg" || die "bad haproxy config"
launch haproxy "$WORK/haproxy/haproxy.log" haproxy -db -f "$WORK/haproxy/haproxy.cfg"

mkdir -p "$WORK/nginx"
{
    echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
    nginx_common "$WORK/nginx"
    echo "worker_processes $THREADS;"
    echo "events { worker_connections 8192; }"
    cat <<EOF
stream {
    server {
        listen 127.0.0.1:$P_N backlog=4096;
        proxy_pass 127.0.0.1:$R;
    }
}
EOF
} >"$WORK/nginx/nginx.conf"
launch nginx "$WORK/nginx/stdout.log" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"

mkdir -p "$WORK/constellation"
cat >"$WORK/constellation/agent.toml" <<EOF
[node]
name = "bench"

[entrypoints.web]
address = "127.0.0.1:$P_W"

[entrypoints.redis]
address = "127.0.0.1:$P_C"

[admin]
address = "127.0.0.1:$A_C"

[routes]
files = ["routes.yaml"]

[proxy]
threads = $THREADS
EOF
cat >"$WORK/constellation/routes.yaml" <<EOF
tcp:
  routers:
    redis:
      entryPoints: [redis]
      rule: "HostSNI(\`*\`)"
      service: redis
  services:
    redis:
      loadBalancer:
        servers:
          - address: "127.0.0.1:$R"
EOF
"$BIN" config check "$WORK/constellation/agent.toml" >/dev/null || die "constellation rejects its config"
launch constellation "$WORK/constellation/agent.log" env CONSTELLATION_LOG="${CONSTELLATION_LOG:-warn}" "$BIN" agent -c "$WORK/constellation/agent.toml"
wait_http "http://127.0.0.1:$A_C/readyz" $((SLOW_START + 20)) || die "constellation not ready (see $WORK/constellation/agent.log)"

declare -A PORT=([direct]=$R [haproxy]=$P_H [nginx]=$P_N [constellation]=$P_C)
for t in "${TARGETS[@]}"; do
    deadline=$((SECONDS + SLOW_START))
    until [[ $(redis-cli -p "${PORT[$t]}" PING 2>/dev/null) == PONG ]]; do
        ((SECONDS < deadline)) || die "$t does not answer PING"
        sleep 0.1
    done
done

# rb OUT PORT N KEEPALIVE: redis-benchmark SET and GET; writes "set get" req/s.
rb() {
    local out=$1 port=$2 n=$3 ka=$4
    redis-benchmark -h 127.0.0.1 -p "$port" -c "$CONNS" -n "$n" -k "$ka" -t set,get --csv 2>/dev/null |
        awk -F'"' '/^"SET"/{s=$4} /^"GET"/{g=$4} END{print s, g}' >"$out"
}

for r in $(seq "$ROUNDS"); do
    for i in 0 1 2 3; do
        t=${TARGETS[$(((i + r - 1) % 4))]}
        log "round $r/$ROUNDS: $t keep-alive"
        rb "$WORK/results/ka_${t}_r$r.txt" "${PORT[$t]}" "$REQUESTS" 1
        log "  $(cat "$WORK/results/ka_${t}_r$r.txt")"
        log "round $r/$ROUNDS: $t new connections"
        rb "$WORK/results/nc_${t}_r$r.txt" "${PORT[$t]}" "$CONN_REQUESTS" 0
        log "  $(cat "$WORK/results/nc_${t}_r$r.txt")"
    done
done

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { # kind target column(1=set,2=get)
    for r in $(seq "$ROUNDS"); do awk -v c="$3" '{print $c}' "$WORK/results/$1_$2_r$r.txt"; done | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
fmt() { awk -v v="$1" 'BEGIN{ printf "%d", v }'; }

SECTION=$WORK/section.md
{
    echo "<!-- tcp-bench:start -->"
    echo "## TCP routing (\`benches/tcp.sh\`)"
    echo
    echo "Produced by \`$CMDLINE\` on $DATE; this block is rewritten by each run."
    echo
    echo "Machine: $CPU, $NPROC CPUs; load average $LOAD_START at the start. redis-server $REDIS_V"
    echo "on loopback behind each proxy (one worker/thread each: HAProxy $HAPROXY_V \`mode tcp\`, nginx $NGINX_V"
    echo "\`stream\`, Constellation $C_V at $C_COMMIT, one catch-all TCP router); load: \`redis-benchmark -c $CONNS -t set,get\`,"
    echo "$REQUESTS requests per keep-alive run and $CONN_REQUESTS per new-connection run (\`-k 0\`), $ROUNDS rounds, medians."
    echo "The load tool, Redis and the proxy share the machine's cores."
    echo
    echo "| | SET req/s (keep-alive) | GET req/s (keep-alive) | SET req/s, a new connection each | vs HAProxy (keep-alive GET / new connections SET) |"
    echo "|---|---|---|---|---|"
    hg=$(col ka haproxy 2)
    hn=$(col nc haproxy 1)
    for t in "${TARGETS[@]}"; do
        s=$(col ka "$t" 1)
        g=$(col ka "$t" 2)
        n=$(col nc "$t" 1)
        name=$t
        [[ $t == direct ]] && name="redis-server directly"
        echo "| $name | $(fmt "$s") | $(fmt "$g") | $(fmt "$n") | $(ratio "$g" "$hg") / $(ratio "$n" "$hn") |"
    done
    echo "<!-- tcp-bench:end -->"
} >"$SECTION"
cat "$SECTION"

if grep -q '<!-- tcp-bench:start -->' "$OUT"; then
    awk -v f="$SECTION" '
        /<!-- tcp-bench:start -->/ { while ((getline l < f) > 0) print l; skip = 1; next }
        /<!-- tcp-bench:end -->/ { skip = 0; next }
        !skip { print }' "$OUT" >"$WORK/out.md"
    cp "$WORK/out.md" "$OUT"
else
    { echo; cat "$SECTION"; } >>"$OUT"
fi
log "results written to $OUT"
