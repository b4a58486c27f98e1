# benches/common.sh: what the proxy benchmarks share (sourced, never run): installing
# haproxy/nginx/wrk/curl, building the release binary, a temp dir cleaned on exit, free
# loopback ports, and starting the backend and the three proxies with the same settings.
#
# Set before sourcing: ROOT; optionally EXTRA_PACKAGES (more commands to install),
# KEEP_TMP/BENCH_KEEP_TMP, SKIP_BUILD/BENCH_SKIP_BUILD. After sourcing: BIN, WORK, PIDS.
# RUN_PREFIX (an array, empty by default) is put in front of each proxy's command line,
# e.g. valgrind; SLOW_START is how long to wait for a proxy to answer (default 10 s).

KEEP_TMP=${KEEP_TMP:-${BENCH_KEEP_TMP:-0}}
SKIP_BUILD=${SKIP_BUILD:-${BENCH_SKIP_BUILD:-0}}
EXTRA_PACKAGES=(${EXTRA_PACKAGES[@]+"${EXTRA_PACKAGES[@]}"})
RUN_PREFIX=()
SLOW_START=10
export PATH="$PATH:/usr/sbin:/sbin"
log() { printf '[proxy-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- dependencies
install_deps() {
    local need=()
    command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
    command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    command -v lscpu >/dev/null 2>&1 || need+=(util-linux)
    local extra
    for extra in "${EXTRA_PACKAGES[@]}"; do command -v "$extra" >/dev/null 2>&1 || need+=("$extra"); done
    ((${#need[@]} == 0)) && return 0
    log "installing ${need[*]}"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
}
install_deps

# ---------------------------------------------------------------- build
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$ROOT/$TARGET_DIR
BIN=$TARGET_DIR/release/constellation
if [[ $SKIP_BUILD != 1 ]]; then
    log "building constellation (release); this can take several minutes"
    (cd "$ROOT" && cargo build --release --bin constellation)
fi
[[ -x $BIN ]] || die "no binary at $BIN"

# ---------------------------------------------------------------- temp dir and cleanup
WORK=$(mktemp -d /tmp/constellation-proxy-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local rc=$?
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 || $rc -ne 0 ]]; then
        log "temp dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Ports come from below the kernel's ephemeral range, so that no client socket (or one
# in TIME-WAIT) of this very benchmark can hold a port that a listener needs later.
read -r EPH_LO EPH_HI </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { EPH_LO=32768 EPH_HI=60999; }
if ((EPH_LO > 12000)); then
    NEXT_PORT=$((10000 + RANDOM % (EPH_LO - 11000)))
else
    NEXT_PORT=$((EPH_HI + 1 + RANDOM % ((65000 - EPH_HI) / 2)))
fi
alloc_ports() { # VAR...: assigns each a distinct loopback port nobody listens on
    local v
    for v in "$@"; do
        while port_in_use "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
        printf -v "$v" '%s' "$NEXT_PORT"
        NEXT_PORT=$((NEXT_PORT + 1))
    done
}

wait_http() { # url [seconds]: wait for a 200
    local url=$1 deadline=$((SECONDS + ${2:-30}))
    while ((SECONDS < deadline)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null) == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

stop_pid() { # graceful stop, then kill
    local p=$1 i
    kill -TERM "$p" 2>/dev/null || return 0
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

# launch NAME LOG CMD...: starts CMD in the background, output appended to LOG; its pid
# goes to PIDS (stopped on exit) and to PID_<NAME>.
launch() {
    local name=$1 out=$2
    shift 2
    "$@" >>"$out" 2>&1 &
    PIDS+=("$!")
    printf -v "PID_$name" '%s' "$!"
}

# bench_facts: sets DATE, NPROC, CPU, HAPROXY_V, NGINX_V, WRK_V, C_COMMIT and C_V, the facts
# each benchmark block names (the machine, the peers it ran beside, the commit measured).
bench_facts() {
    DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
    NPROC=$(nproc)
    CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1) || true
    HAPROXY_V=$(haproxy -v 2>&1 | head -1) || true
    NGINX_V=$(nginx -v 2>&1 | head -1) || true
    WRK_V=$( (wrk -v 2>&1 || true) | head -1 | sed 's/ Copyright.*//') || true
    C_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        C_COMMIT="$C_COMMIT (work tree had uncommitted changes)"
    fi
    C_V=$("$BIN" --version 2>/dev/null | head -1 || echo constellation)
}

# haproxy_defaults: the `defaults` section of every HAProxy the benchmarks start.
haproxy_defaults() {
    cat <<'EOF'
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    http-reuse always
EOF
}

nginx_common() { # dir: the lines every nginx here shares
    local d=$1
    mkdir -p "$d/tmp"
    cat <<EOF
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 16384;
EOF
}
nginx_http_common() {
    local d=$1
    cat <<EOF
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
EOF
}

# start_backend NAME PORT SINGLE: nginx returning a fixed 200 "ok\n". SINGLE=1 runs it as
# one process (master_process off) so `kill -9` of that pid takes the backend down whole.
start_backend() {
    local name=$1 port=$2 single=$3 d=$WORK/$1
    mkdir -p "$d"
    {
        nginx_common "$d"
        echo "worker_processes 1;"
        [[ $single == 1 ]] && echo "master_process off;"
        echo "events { worker_connections 4096; }"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
    } >"$d/nginx.conf"
    launch "$name" "$d/stdout.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
    wait_http "http://127.0.0.1:$port/" 10 || die "backend $name did not start (see $d/error.log)"
}

# start_nginx_proxy NAME PORT WORKERS FAILOVER BACKEND_PORT...
start_nginx_proxy() {
    local name=$1 port=$2 workers=$3 failover=$4 d=$WORK/$1
    shift 4
    mkdir -p "$d"
    {
        nginx_common "$d"
        echo "worker_processes $workers;"
        [[ ${NGINX_SINGLE:-0} == 1 ]] && echo "master_process off;"
        echo "events { worker_connections 4096; }"
        echo "http {"
        nginx_http_common "$d"
        echo "    keepalive_requests 1000000;"
        echo "    upstream be {"
        local b
        for b in "$@"; do echo "        server 127.0.0.1:$b;"; done
        echo "        keepalive 64;"
        echo "        keepalive_requests 1000000;"
        echo "    }"
        echo "    server {"
        echo "        listen 127.0.0.1:$port backlog=4096;"
        echo "        location / {"
        echo "            proxy_pass http://be;"
        echo "            proxy_http_version 1.1;"
        echo '            proxy_set_header Connection "";'
        [[ $failover == 1 ]] && echo "            proxy_next_upstream error timeout http_502 http_503 http_504;"
        echo "        }"
        echo "    }"
        echo "}"
    } >"$d/nginx.conf"
    launch "$name" "$d/stdout.log" "${RUN_PREFIX[@]}" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
    wait_http "http://127.0.0.1:$port/" "$SLOW_START" || die "nginx proxy $name did not start (see $d/error.log)"
}

# start_haproxy NAME PORT THREADS FAILOVER BACKEND_PORT...
start_haproxy() {
    local name=$1 port=$2 threads=$3 failover=$4 d=$WORK/$1
    shift 4
    mkdir -p "$d"
    {
        cat <<EOF
global
    nbthread $threads
    maxconn 4096

$(haproxy_defaults)

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
EOF
        local b i=0 check=""
        if [[ $failover == 1 ]]; then
            echo "    option redispatch"
            echo "    retries 3"
            echo "    retry-on conn-failure empty-response response-timeout 503"
            check=" check inter 1s"
        fi
        for b in "$@"; do
            i=$((i + 1))
            echo "    server s$i 127.0.0.1:$b$check"
        done
    } >"$d/haproxy.cfg"
    haproxy -c -q -f "$d/haproxy.cfg" || die "bad haproxy config $d/haproxy.cfg"
    launch "$name" "$d/haproxy.log" "${RUN_PREFIX[@]}" haproxy -db -f "$d/haproxy.cfg"
    wait_http "http://127.0.0.1:$port/" "$SLOW_START" || die "haproxy $name did not start (see $d/haproxy.log)"
}

# start_constellation NAME PORT ADMIN_PORT THREADS BACKEND_PORT...
start_constellation() {
    local name=$1 port=$2 admin=$3 threads=$4 d=$WORK/$1
    shift 4
    mkdir -p "$d"
    cat >"$d/agent.toml" <<EOF
[node]
name = "bench"

[entrypoints.web]
address = "127.0.0.1:$port"

[admin]
address = "127.0.0.1:$admin"

[routes]
files = ["routes.yaml"]

[proxy]
threads = $threads
EOF
    {
        cat <<'EOF'
http:
  routers:
    bench:
      rule: "PathPrefix(`/`)"
      service: bench
  services:
    bench:
      loadBalancer:
        servers:
EOF
        local b
        for b in "$@"; do echo "          - url: \"http://127.0.0.1:$b\""; done
    } >"$d/routes.yaml"
    "$BIN" config check "$d/agent.toml" >/dev/null || die "constellation rejects $d/agent.toml"
    launch "$name" "$d/agent.log" env CONSTELLATION_LOG="${CONSTELLATION_LOG:-info}" "${RUN_PREFIX[@]}" "$BIN" agent -c "$d/agent.toml"
    wait_http "http://127.0.0.1:$admin/readyz" $((SLOW_START + 20)) || die "constellation $name not ready (see $d/agent.log)"
    wait_http "http://127.0.0.1:$port/" "$SLOW_START" || die "constellation $name does not proxy (see $d/agent.log)"
}

# parse_wrk FILE: prints "rps p50_ms p99_ms requests non2xx socket_errors"
parse_wrk() {
    awk '
    function ms(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s") return n * 1000
        if (u == "m") return n * 60000
        return n
    }
    /Requests\/sec:/ { rps = $2 }
    /requests in/ { total = $1 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ {
        s = $0; sub(/.*Socket errors: */, "", s); n = split(s, parts, ",")
        for (i = 1; i <= n; i++) { split(parts[i], kv, " "); sock += kv[2] }
    }
    END { printf "%s %.3f %.3f %d %d %d\n", rps, p50, p99, total, non2xx + 0, sock + 0 }
    ' "$1"
}
socket_errors_text() { grep -o 'Socket errors:.*' "$1" | sed 's/Socket errors: //' || echo "none"; }

median() { # numbers as arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

run_wrk() { # out_file url [extra wrk args...]
    local out=$1 url=$2
    shift 2
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" >"$out" 2>&1 || true
}
warm() { wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$1" >/dev/null 2>&1 || true; }

metric_sum() { # metrics_text name: sum of every sample of that metric
    printf '%s\n' "$1" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s }'
}

# replace_block FILE NAME BLOCK_FILE: puts BLOCK_FILE (which starts with
# `<!-- NAME:start -->` and ends with `<!-- NAME:end -->`) in place of that block of FILE,
# or appends it when FILE has none.
replace_block() {
    local out=$1 name=$2 block=$3
    mkdir -p "$(dirname "$out")"
    [[ -f $out ]] || printf '# Benchmarks\n' >"$out"
    if grep -q "<!-- $name:start -->" "$out" && grep -q "<!-- $name:end -->" "$out"; then
        awk -v block="$block" -v s="<!-- $name:start -->" -v e="<!-- $name:end -->" '
            $0 == s { while ((getline l < block) > 0) print l; skip = 1; next }
            $0 == e { skip = 0; next }
            !skip { print }
        ' "$out" >"$WORK/out.md"
    else
        { cat "$out"; echo; cat "$block"; } >"$WORK/out.md"
    fi
    cat "$WORK/out.md" >"$out"
    log "wrote $out"
}
