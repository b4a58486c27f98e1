#!/usr/bin/env bash
# benches/proxy.sh: Constellation vs. nginx vs. HAProxy as HTTP/1.1 reverse proxies
# on loopback, plus a failover run that kills one of three backends under load.
#
# Usage: bash benches/proxy.sh
#
# It installs what it needs (haproxy, nginx-light, wrk, curl) with apt-get when it is
# missing, builds `constellation` in release mode (honours CARGO_TARGET_DIR), runs
# everything on 127.0.0.1 from a temp dir under /tmp, and rewrites the block between
# `<!-- proxy-bench:start -->` and `<!-- proxy-bench:end -->` in docs/benchmarks.md.
# Every process it starts is stopped on exit.
#
# Knobs (environment):
#   BENCH_ROUNDS=3          measured rounds per round set (proxies interleaved per round)
#   BENCH_DURATION=10       seconds per measured wrk run
#   BENCH_WARMUP=2          seconds of warm-up wrk run before each measured run
#   BENCH_CONNS=50          wrk connections (wrk -t1)
#   BENCH_THREAD_SETS="1 2" worker processes/threads per proxy, one round set each
#   BENCH_FAILOVER=1        0 skips the failover run
#   BENCH_FAILOVER_THREADS=1 workers/threads per proxy in the failover run
#   BENCH_OUT=docs/benchmarks.md
#   BENCH_KEEP_TMP=0        1 keeps the temp dir (configs, logs, raw wrk output)
#   BENCH_SKIP_BUILD=0      1 uses the existing release binary as is
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNS:-50}
THREAD_SETS=${BENCH_THREAD_SETS:-"1 2"}
FAILOVER=${BENCH_FAILOVER:-1}
FAILOVER_THREADS=${BENCH_FAILOVER_THREADS:-1}
OUT=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
KEEP_TMP=${BENCH_KEEP_TMP:-0}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}
FO_CONNS=20
FO_DURATION=10
FO_KILL_AFTER=3
PROXIES=(haproxy nginx constellation)

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"

# ---------------------------------------------------------------- environment facts
bench_facts
KERNEL=$(uname -r)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
CMDLINE="bash benches/proxy.sh"
for v in BENCH_ROUNDS BENCH_DURATION BENCH_WARMUP BENCH_CONNS BENCH_THREAD_SETS BENCH_FAILOVER BENCH_FAILOVER_THREADS; do
    [[ -n ${!v:-} ]] && CMDLINE="$v=\"${!v}\" $CMDLINE"
done
log "work dir $WORK; $NPROC CPUs ($CPU)"

mkdir -p "$WORK/results"
SECTION=$WORK/section.md

# ---------------------------------------------------------------- throughput round sets
alloc_ports BACKEND_PORT
start_backend backend "$BACKEND_PORT" 0
log "backend nginx on 127.0.0.1:$BACKEND_PORT"

{
    echo "## Proxy throughput and failover (\`benches/proxy.sh\`)"
    echo
    echo "Produced by \`$CMDLINE\` on $DATE; this block is rewritten by each run."
    echo
    echo "| | |"
    echo "| --- | --- |"
    echo "| machine | $NPROC CPUs (\`nproc\`), $CPU, Linux $KERNEL |"
    echo "| HAProxy | $HAPROXY_V |"
    echo "| nginx | $NGINX_V |"
    echo "| wrk | $WRK_V |"
    echo "| Constellation | $C_V, git $C_COMMIT, release build |"
    echo
    echo "Everything runs on 127.0.0.1 on the same machine: one backend (nginx, \`worker_processes 1\`,"
    echo "access log off, \`return 200 \"ok\\n\"\`), the three proxies side by side in front of it,"
    echo "and the load generator. Each proxy keeps connections to the backend alive (nginx:"
    echo "\`upstream { keepalive 64; }\`, \`proxy_http_version 1.1\`, \`proxy_set_header Connection \"\"\`;"
    echo "HAProxy: \`mode http\`, \`http-reuse always\`, timeouts set; Constellation: its connection pool,"
    echo "on by default). Constellation runs with its circuit breakers, routing (a \`PathPrefix(\`/\`)\`"
    echo "router from a Traefik route file), retries and Prometheus metrics on: they are always on and"
    echo "were not turned off for the benchmark. HAProxy and nginx run without health checks here."
    echo
    echo "Load: \`wrk -t1 -c$CONNS -d${DURATION}s --latency\` after a ${WARMUP} s \`wrk -t1 -c$CONNS\` warm-up,"
    echo "$ROUNDS round(s), the order of the proxies rotated each round; the table shows the median over the"
    echo "rounds of each column separately. The load generator, the backend and the proxy share $NPROC CPUs,"
    echo "so these figures are for comparing the proxies with one another on this machine, not absolute"
    echo "capacities. The machine was shared with other work (builds, tests) while this ran, so the"
    echo "figures are noisy; compare ratios rather than absolute numbers. Load average (1, 5, 15 min)"
    echo "when the benchmark started: $LOAD_START; see the end of this block for the value at its end."
    echo
    echo "For context (not measured by this script): a plain Pingora proxy with default settings was"
    echo "earlier seen at about 0.55–0.6× HAProxy 2.6's requests/s on this 2-CPU machine."
    echo
} >"$SECTION"

for T in $THREAD_SETS; do
    log "round set: $T worker(s)/thread(s) per proxy"
    alloc_ports P_H P_N P_C A_C
    start_haproxy "haproxy_t$T" "$P_H" "$T" 0 "$BACKEND_PORT"
    start_nginx_proxy "nginx_t$T" "$P_N" "$T" 0 "$BACKEND_PORT"
    start_constellation "constellation_t$T" "$P_C" "$A_C" "$T" "$BACKEND_PORT"
    declare -A URL=([haproxy]="http://127.0.0.1:$P_H/" [nginx]="http://127.0.0.1:$P_N/" [constellation]="http://127.0.0.1:$P_C/")
    for p in "${PROXIES[@]}"; do
        body=$(curl -s --max-time 2 "${URL[$p]}")
        [[ $body == ok ]] || die "$p answered '$body' instead of ok"
    done

    log "baseline: wrk straight to the backend"
    warm "http://127.0.0.1:$BACKEND_PORT/"
    run_wrk "$WORK/results/t${T}_backend.txt" "http://127.0.0.1:$BACKEND_PORT/"

    for r in $(seq "$ROUNDS"); do
        order=()
        for i in 0 1 2; do order+=("${PROXIES[$(((i + r - 1) % 3))]}"); done
        for p in "${order[@]}"; do
            log "set $T, round $r/$ROUNDS: $p"
            warm "${URL[$p]}"
            run_wrk "$WORK/results/t${T}_${p}_r$r.txt" "${URL[$p]}"
            read -r rps p50 p99 total non2xx sock < <(parse_wrk "$WORK/results/t${T}_${p}_r$r.txt")
            log "  $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx $non2xx, socket errors $sock"
        done
    done

    # Medians and the table.
    declare -A RPS=() P50=() P99=() ERRS=() ALL_RPS=()
    for p in backend "${PROXIES[@]}"; do
        rs=() fs=() ns=() errs=0
        for f in "$WORK/results/t${T}_${p}"*.txt; do
            read -r rps p50 p99 total non2xx sock < <(parse_wrk "$f")
            rs+=("$rps") fs+=("$p50") ns+=("$p99")
            errs=$((errs + non2xx + sock))
        done
        RPS[$p]=$(median "${rs[@]}") P50[$p]=$(median "${fs[@]}") P99[$p]=$(median "${ns[@]}") ERRS[$p]=$errs
        ALL_RPS[$p]="${rs[*]}"
    done
    {
        if [[ $T == 1 ]]; then
            echo "### 1 worker each: nginx \`worker_processes 1\`, HAProxy \`nbthread 1\`, Constellation \`[proxy] threads = 1\`"
        else
            echo "### $T workers each: nginx \`worker_processes $T\`, HAProxy \`nbthread $T\`, Constellation \`[proxy] threads = $T\`"
        fi
        echo
        echo "Backend: nginx \`worker_processes 1\` in both round sets."
        echo
        echo "| target | requests/s (median) | ÷ HAProxy | p50 latency | p99 latency | requests/s per round | errors |"
        echo "| --- | ---: | ---: | ---: | ---: | --- | ---: |"
        for p in "${PROXIES[@]}" backend; do
            label=$p
            [[ $p == backend ]] && label="backend direct (baseline, 1 run)"
            [[ $p == haproxy ]] && label="HAProxy"
            [[ $p == nginx ]] && label="nginx"
            [[ $p == constellation ]] && label="Constellation"
            ratio=$(awk -v a="${RPS[$p]}" -v b="${RPS[haproxy]}" 'BEGIN { printf "%.2f×", a / b }')
            rounds=$(printf '%s\n' ${ALL_RPS[$p]} | awk '{ printf "%s%.0f", (NR > 1 ? ", " : ""), $1 }')
            printf '| %s | %.0f | %s | %.2f ms | %.2f ms | %s | %s |\n' "$label" "${RPS[$p]}" "$ratio" \
                "${P50[$p]}" "${P99[$p]}" "$rounds" "${ERRS[$p]}"
        done
        echo
    } >>"$SECTION"

    for p in "haproxy_t$T" "nginx_t$T" "constellation_t$T"; do
        pv="PID_$p"
        stop_pid "${!pv}"
    done
    unset URL RPS P50 P99 ERRS ALL_RPS
done

# ---------------------------------------------------------------- failover run
if [[ $FAILOVER == 1 ]]; then
    log "failover run: three backends, $FAILOVER_THREADS worker(s)/thread(s) per proxy"
    alloc_ports B1 B2 B3
    start_backend fb1 "$B1" 1
    start_backend fb2 "$B2" 1
    start_backend fb3 "$B3" 1
    alloc_ports P_H P_N P_C A_C
    start_haproxy fo_haproxy "$P_H" "$FAILOVER_THREADS" 1 "$B1" "$B2" "$B3"
    start_nginx_proxy fo_nginx "$P_N" "$FAILOVER_THREADS" 1 "$B1" "$B2" "$B3"
    start_constellation fo_constellation "$P_C" "$A_C" "$FAILOVER_THREADS" "$B1" "$B2" "$B3"
    declare -A FURL=([haproxy]="http://127.0.0.1:$P_H/" [nginx]="http://127.0.0.1:$P_N/" [constellation]="http://127.0.0.1:$P_C/")
    sleep 3 # let HAProxy's health checks see every server up
    declare -A FO=() FO_SOCK=()
    for p in "${PROXIES[@]}"; do
        # All three backends up (the one killed in the previous run is restarted).
        if ! kill -0 "$PID_fb1" 2>/dev/null; then
            start_backend fb1 "$B1" 1
            sleep 4 # HAProxy: rise 2 × inter 1s, with margin
        fi
        [[ $p == constellation ]] && M_BEFORE=$(curl -s "http://127.0.0.1:$A_C/metrics")
        log "failover: $p under wrk -t1 -c$FO_CONNS -d${FO_DURATION}s; kill -9 of backend 1 after ${FO_KILL_AFTER}s"
        out=$WORK/results/failover_$p.txt
        wrk -t1 -c"$FO_CONNS" -d"${FO_DURATION}s" --latency "${FURL[$p]}" >"$out" 2>&1 &
        wrk_pid=$!
        PIDS+=("$wrk_pid")
        sleep "$FO_KILL_AFTER"
        kill -9 "$PID_fb1"
        wait "$PID_fb1" 2>/dev/null || true
        log "  killed backend 1 (pid $PID_fb1)"
        wait "$wrk_pid" || true
        read -r rps p50 p99 total non2xx sock < <(parse_wrk "$out")
        FO[$p]="$total $non2xx $sock $rps $p99"
        FO_SOCK[$p]=$(socket_errors_text "$out")
        log "  $total requests, non-2xx $non2xx, socket errors $sock (${FO_SOCK[$p]})"
        if [[ $p == constellation ]]; then
            M_AFTER=$(curl -s "http://127.0.0.1:$A_C/metrics")
        fi
    done

    {
        echo "### Failover: one of three backends killed under load"
        echo
        echo "Three backends (separate single-process nginx instances, \`master_process off\`, so that"
        echo "\`kill -9\` of one pid takes a backend down whole). Each proxy has all three, $FAILOVER_THREADS"
        echo "worker(s)/thread(s) each:"
        echo
        echo "- HAProxy: \`option redispatch\`, \`retries 3\`, \`retry-on conn-failure empty-response response-timeout 503\`,"
        echo "  \`check inter 1s\` on each server, \`http-reuse always\`, round robin;"
        echo "- nginx: \`proxy_next_upstream error timeout http_502 http_503 http_504\`, default \`max_fails=1 fail_timeout=10s\`,"
        echo "  \`keepalive 64\`, round robin;"
        echo "- Constellation: defaults (\`max_attempts = 3\`, retry budget 20 % / 10 concurrent, breakers"
        echo "  on with their default thresholds, no health check configured in the route file)."
        echo
        echo "For each proxy in turn: \`wrk -t1 -c$FO_CONNS -d${FO_DURATION}s --latency\` GET load; ${FO_KILL_AFTER} s in,"
        echo "\`kill -9\` of backend 1; the backend is restarted (and HAProxy given time to see it up) before"
        echo "the next proxy's run. Errors are what the client saw: wrk's \"Non-2xx or 3xx responses\" plus"
        echo "its socket errors (connect, read, write, timeout)."
        echo
        echo "| proxy | requests | non-2xx | socket errors | client-visible errors | requests/s | p99 latency |"
        echo "| --- | ---: | ---: | --- | ---: | ---: | ---: |"
        for p in "${PROXIES[@]}"; do
            read -r total non2xx sock rps p99 <<<"${FO[$p]}"
            label=$p
            [[ $p == haproxy ]] && label="HAProxy"
            [[ $p == constellation ]] && label="Constellation"
            printf '| %s | %d | %d | %d (%s) | **%d** | %.0f | %.2f ms |\n' "$label" "$total" "$non2xx" "$sock" \
                "${FO_SOCK[$p]}" "$((non2xx + sock))" "$rps" "$p99"
        done
        echo
        echo "Constellation's own metrics over its failover run (after minus before):"
        echo
        for m in constellation_retries_total constellation_retries_suppressed_total constellation_breaker_transitions_total; do
            b=$(metric_sum "$M_BEFORE" "$m")
            a=$(metric_sum "$M_AFTER" "$m")
            echo "- \`$m\`: $((a - b))"
        done
        echo
        echo "Samples after the run:"
        echo
        echo '```'
        printf '%s\n' "$M_AFTER" | grep -E '^constellation_(retries_total|retries_suppressed_total|breaker_transitions_total|breaker_state)\{' || echo "(none)"
        echo '```'
        echo
        clog=$WORK/fo_constellation/agent.log
        grep -E 'WARN|ERROR' "$clog" >"$WORK/fo_constellation_warn.log" || true
        nwarn=$(wc -l <"$WORK/fo_constellation_warn.log")
        sed -E 's/\x1b\[[0-9;]*m//g; s/^[0-9TZ:.-]+ +//; s/127\.0\.0\.1:[0-9]+/ADDR/g; s/[0-9]+/N/g' \
            "$WORK/fo_constellation_warn.log" | sort | uniq -c | sort -rn | head -8 | cut -c1-220 \
            >"$WORK/fo_constellation_warn_summary.txt" || true
        # Should the summary come out empty, show the first raw lines instead.
        [[ -s $WORK/fo_constellation_warn_summary.txt ]] ||
            head -5 "$WORK/fo_constellation_warn.log" >"$WORK/fo_constellation_warn_summary.txt"
        echo "Constellation's log over the failover run: $nwarn WARN/ERROR lines (Pingora logs one WARN per"
        echo "failed upstream attempt, including attempts that were then retried); the distinct messages"
        echo "(timestamps, numbers and addresses stripped; most frequent first):"
        echo
        echo '```'
        cat "$WORK/fo_constellation_warn_summary.txt"
        echo '```'
        echo
    } >>"$SECTION"
fi

# ---------------------------------------------------------------- write docs/benchmarks.md
{
    echo "Load average at the end of the benchmark: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)."
    echo
    echo "Raw wrk output and configs are in a temp dir that is removed at the end; run with"
    echo "\`BENCH_KEEP_TMP=1\` to keep them."
} >>"$SECTION"

BLOCK=$WORK/block.md
{
    echo "<!-- proxy-bench:start -->"
    cat "$SECTION"
    echo "<!-- proxy-bench:end -->"
} >"$BLOCK"
replace_block "$OUT" proxy-bench "$BLOCK"
sed -n '/<!-- proxy-bench:start -->/,/<!-- proxy-bench:end -->/p' "$OUT"
