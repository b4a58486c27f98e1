#!/usr/bin/env bash
# benches/https.sh: Constellation vs. nginx vs. HAProxy terminating HTTPS on loopback in
# front of one plain-HTTP nginx backend: keep-alive HTTPS requests/s, and new TLS
# handshakes/s (every request on a new connection, `Connection: close`).
#
# Usage: bash benches/https.sh
#
# All three proxies serve the same certificate and key (ECDSA P-256, made by openssl for
# the run), TLS 1.3 offered by all three, session resumption turned off everywhere
# (nginx `ssl_session_cache off; ssl_session_tickets off`, HAProxy `no-tls-tickets` and
# `tune.ssl.cachesize 0`, Constellation: rustls with no ticketer; wrk itself does not
# resume), so each new connection is a full handshake. It installs what it needs
# (haproxy, nginx-light, wrk, curl, openssl) with apt-get, builds `constellation` in
# release mode (honours CARGO_TARGET_DIR), and rewrites the block between
# `<!-- https-bench:start -->` and `<!-- https-bench:end -->` in docs/benchmarks.md.
#
# Knobs (environment):
#   BENCH_ROUNDS=3      measured rounds (proxies rotated per round); medians are reported
#   BENCH_DURATION=10   seconds per measured wrk run
#   BENCH_WARMUP=2      seconds of warm-up before each measured run
#   BENCH_CONNS=50      wrk connections for the keep-alive runs (wrk -t1)
#   BENCH_HS_CONNS=20   wrk connections for the handshake runs
#   BENCH_THREADS=1     workers/threads per proxy
#   BENCH_OUT=docs/benchmarks.md
#   BENCH_KEEP_TMP=0, BENCH_SKIP_BUILD=0 as in benches/proxy.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNS:-50}
HS_CONNS=${BENCH_HS_CONNS:-20}
THREADS=${BENCH_THREADS:-1}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
PROXIES=(haproxy nginx constellation)
EXTRA_PACKAGES=(openssl)

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

OPENSSL_V=$(openssl version 2>/dev/null || echo unknown)
bench_facts
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
CMDLINE="bash benches/https.sh"
for v in BENCH_ROUNDS BENCH_DURATION BENCH_WARMUP BENCH_CONNS BENCH_HS_CONNS BENCH_THREADS; do
    [[ -n ${!v:-} ]] && CMDLINE="$v=\"${!v}\" $CMDLINE"
done
mkdir -p "$WORK/results"

# ---------------------------------------------------------------- the certificate
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" >/dev/null 2>&1 || die "openssl could not make a certificate"
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/both.pem"

start_nginx_tls() { # name port backend
    local name=$1 port=$2 backend=$3 d=$WORK/$1
    mkdir -p "$d"
    {
        nginx_common "$d"
        echo "worker_processes $THREADS;"
        echo "events { worker_connections 4096; }"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    keepalive_requests 1000000;
    upstream be { server 127.0.0.1:$backend; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$d/nginx.conf"
    launch "$name" "$d/stdout.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
}

start_haproxy_tls() { # name port backend
    local name=$1 port=$2 backend=$3 d=$WORK/$1
    mkdir -p "$d"
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread $THREADS
    maxconn 4096
    tune.ssl.cachesize 0
    ssl-default-bind-options no-tls-tickets

$(haproxy_defaults)

frontend fe
    bind 127.0.0.1:$port ssl crt $WORK/both.pem
    default_backend be

backend be
    server s1 127.0.0.1:$backend
EOF
    haproxy -c -q -f "$d/haproxy.cfg" || die "bad haproxy config $d/haproxy.cfg"
    launch "$name" "$d/haproxy.log" haproxy -db -f "$d/haproxy.cfg"
}

start_constellation_tls() { # name port admin backend
    local name=$1 port=$2 admin=$3 backend=$4 d=$WORK/$1
    mkdir -p "$d"
    cat >"$d/agent.toml" <<EOF
[node]
name = "bench"

[entrypoints.websecure]
address = "127.0.0.1:$port"
tls = true

[admin]
address = "127.0.0.1:$admin"

[routes]
files = ["routes.yaml"]

[proxy]
threads = $THREADS
EOF
    cat >"$d/routes.yaml" <<EOF
http:
  routers:
    bench:
      rule: "PathPrefix(\`/\`)"
      service: bench
      tls: {}
  services:
    bench:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:$backend"
tls:
  stores:
    default:
      defaultCertificate:
        certFile: $WORK/cert.pem
        keyFile: $WORK/key.pem
EOF
    "$BIN" config check "$d/agent.toml" >/dev/null || die "constellation rejects $d/agent.toml"
    launch "$name" "$d/agent.log" env CONSTELLATION_LOG="${CONSTELLATION_LOG:-info}" "$BIN" agent -c "$d/agent.toml"
    wait_http "http://127.0.0.1:$admin/readyz" $((SLOW_START + 20)) || die "constellation $name not ready (see $d/agent.log)"
}

wait_https() { # port
    local deadline=$((SECONDS + SLOW_START))
    while ((SECONDS < deadline)); do
        [[ $(curl -s --cacert "$WORK/cert.pem" --resolve "bench.test:$1:127.0.0.1" --max-time 1 "https://bench.test:$1/") == ok ]] && return 0
        sleep 0.1
    done
    return 1
}

alloc_ports BACKEND_PORT P_H P_N P_C A_C
start_backend backend "$BACKEND_PORT" 0
start_haproxy_tls haproxy "$P_H" "$BACKEND_PORT"
start_nginx_tls nginx "$P_N" "$BACKEND_PORT"
start_constellation_tls constellation "$P_C" "$A_C" "$BACKEND_PORT"
declare -A PORT=([haproxy]=$P_H [nginx]=$P_N [constellation]=$P_C)
for p in "${PROXIES[@]}"; do
    wait_https "${PORT[$p]}" || die "$p does not answer ok over HTTPS"
    proto=$(curl -s -o /dev/null -w '%{ssl_verify_result} %{http_version}' --cacert "$WORK/cert.pem" \
        --resolve "bench.test:${PORT[$p]}:127.0.0.1" "https://bench.test:${PORT[$p]}/")
    log "$p: verify result and HTTP version: $proto"
done

# wrk sends no SNI for an IP URL; all three serve their only certificate then.
for r in $(seq "$ROUNDS"); do
    order=()
    for i in 0 1 2; do order+=("${PROXIES[$(((i + r - 1) % 3))]}"); done
    for p in "${order[@]}"; do
        url="https://127.0.0.1:${PORT[$p]}/"
        log "round $r/$ROUNDS: $p keep-alive"
        warm "$url"
        run_wrk "$WORK/results/ka_${p}_r$r.txt" "$url"
        log "  $(parse_wrk "$WORK/results/ka_${p}_r$r.txt")"
        log "round $r/$ROUNDS: $p new connections"
        wrk -t1 -c"$HS_CONNS" -d"${WARMUP}s" -H "Connection: close" "$url" >/dev/null 2>&1 || true
        wrk -t1 -c"$HS_CONNS" -d"${DURATION}s" --latency -H "Connection: close" "$url" >"$WORK/results/hs_${p}_r$r.txt" 2>&1 || true
        log "  $(parse_wrk "$WORK/results/hs_${p}_r$r.txt")"
    done
done

SECTION=$WORK/section.md
{
    echo "<!-- https-bench:start -->"
    echo "## HTTPS termination (\`benches/https.sh\`)"
    echo
    echo "Produced by \`$CMDLINE\` on $DATE; this block is rewritten by each run."
    echo
    echo "| | |"
    echo "| --- | --- |"
    echo "| machine | $NPROC CPUs (\`nproc\`), $CPU, Linux $(uname -r) |"
    echo "| HAProxy | $HAPROXY_V |"
    echo "| nginx | $NGINX_V |"
    echo "| wrk | $WRK_V ($OPENSSL_V) |"
    echo "| Constellation | $C_V, git $C_COMMIT, release build, rustls (ring) |"
    echo
    echo "Each proxy terminates TLS with the same ECDSA P-256 certificate in front of one plain nginx"
    echo "backend on 127.0.0.1 (upstream connections kept alive), $THREADS worker/thread each;"
    echo "Constellation with routing, breakers, retries and metrics on. Session resumption is off in"
    echo "all three, so every new connection is a full handshake (TLS 1.3, X25519, ECDSA)."
    echo "Keep-alive: \`wrk -t1 -c$CONNS -d${DURATION}s\`; new connections: the same with"
    echo "\`-c$HS_CONNS -H 'Connection: close'\` (one request per connection, so requests/s there is"
    echo "handshakes/s). $ROUNDS rounds, proxies rotated, medians. Load generator, backend and proxy"
    echo "share $NPROC CPUs: compare ratios. Load average at the start: $LOAD_START."
    echo
    echo "| proxy | keep-alive req/s | ÷ HAProxy | p99 | handshakes/s | ÷ HAProxy | p99 | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    declare -A KA=() KP=() HS=() HP=() ER=()
    for p in "${PROXIES[@]}"; do
        a=() b=() c=() d=() errs=0
        for r in $(seq "$ROUNDS"); do
            read -r rps _ p99 _ n2 so < <(parse_wrk "$WORK/results/ka_${p}_r$r.txt")
            a+=("$rps") b+=("$p99") errs=$((errs + n2 + so))
            read -r rps _ p99 _ n2 so < <(parse_wrk "$WORK/results/hs_${p}_r$r.txt")
            c+=("$rps") d+=("$p99") errs=$((errs + n2 + so))
        done
        KA[$p]=$(median "${a[@]}") KP[$p]=$(median "${b[@]}") HS[$p]=$(median "${c[@]}") HP[$p]=$(median "${d[@]}") ER[$p]=$errs
    done
    for p in "${PROXIES[@]}"; do
        label=$p
        [[ $p == haproxy ]] && label=HAProxy
        [[ $p == constellation ]] && label=Constellation
        printf '| %s | %.0f | %.2f× | %.2f ms | %.0f | %.2f× | %.2f ms | %s |\n' "$label" \
            "${KA[$p]}" "$(awk -v a="${KA[$p]}" -v b="${KA[haproxy]}" 'BEGIN { print a / b }')" "${KP[$p]}" \
            "${HS[$p]}" "$(awk -v a="${HS[$p]}" -v b="${HS[haproxy]}" 'BEGIN { print a / b }')" "${HP[$p]}" "${ER[$p]}"
    done
    echo
    echo "Errors count non-2xx answers and wrk socket errors (with \`Connection: close\` wrk may count"
    echo "the server's close as a read error; the raw outputs are in the temp dir with BENCH_KEEP_TMP=1)."
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "<!-- https-bench:end -->"
} >"$SECTION"
replace_block "$OUT" https-bench "$SECTION"
