#!/usr/bin/env bash
# Identity hot paths benchmark (issue 13): annuaire side by side with an actix-web hello world.
#
# Usage: bench/identity.sh [--associations N[,N...]] [--rules R] [--duration SECONDS]
#                          [--threads T] [--connections C] [--backend sqlite|postgres|both]
#                          [--annuaire-bin PATH] [--out FILE]
#
# Defaults: --associations 100000,1000000,5000000 --rules 10000 --duration 10 --threads 2
# --connections 16 --backend sqlite --out bench/results/identity.md. --annuaire-bin benchmarks
# another build of annuaire (e.g. an older one, to compare) with the same dataset and tools.
#
# For each backend and each association count (in increasing order: the synthetic people of a
# smaller count are the first ones of a larger count, so one database grows from one count to
# the next), it
#   1. builds the dataset (`cargo run --example bench_identity_data`: N associations with their
#      lookup hashes, R allowlist rules, an access token that accepted the terms, the request
#      bodies) and reports how long that took,
#   2. starts `annuaire serve` (release, terms.example.toml, the R rules, log level warn) and
#      the hello world (`examples/bench_hello_world.rs`, the same actix-web and release profile,
#      one worker per CPU like annuaire), and waits until annuaire's lookup index is loaded,
#   3. runs wrk (T threads, C connections, SECONDS each) on: the hello world; the hello world's
#      /info of the same shape as annuaire's, driven like annuaire's (the floor: the query parsed
#      and an answer of the same size, no work); GET /_matrix/identity/v2 (ping, no auth); GET /v2/hash_details (Bearer); the ping again
#      through a Lua request callback like /info's (what wrk's callback costs, for reference);
#      GET /api/v1/info (addresses in turn, half bound); POST /v2/lookup (1,000 sha256 hashes per
#      request, half bound, 64 bodies in turn); the ping and the hello world again,
#   4. reads annuaire's resident memory (VmRSS idle, after each run, and the peak VmHWM).
# Results: bench/results/identity.md (raw wrk outputs stay in the work folder it prints).
#
# Needs wrk (`apt-get install wrk`) and, for PostgreSQL, the PostgreSQL 15 server binaries
# (scripts/lib/postgres.sh starts a throwaway server). Release builds; not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh

sizes="100000,1000000,5000000"
rules=10000
duration=10
threads=2
connections=16
backends="sqlite"
annuaire_bin=""
out=bench/results/identity.md
while (($# > 0)); do
    case "$1" in
    --associations) sizes="$2"; shift ;;
    --rules) rules="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --connections) connections="$2"; shift ;;
    --annuaire-bin) annuaire_bin="$2"; shift ;;
    --out) out="$2"; shift ;;
    --backend)
        case "$2" in
        sqlite | postgres) backends="$2" ;;
        both) backends="sqlite postgres" ;;
        *) die "--backend: sqlite, postgres or both" ;;
        esac
        shift
        ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
command -v wrk >/dev/null || die "wrk is not installed: apt-get install wrk"
command -v curl >/dev/null || die "curl is not installed"
IFS=, read -r -a size_list <<<"$sizes"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
info "building the release binary and the bench tools"
cargo build --release --bin annuaire --example bench_hello_world --example bench_identity_data
bin="${annuaire_bin:-$CARGO_TARGET_DIR/release/annuaire}"
hello="$CARGO_TARGET_DIR/release/examples/bench_hello_world"
dataset="$CARGO_TARGET_DIR/release/examples/bench_identity_data"

work="$(mktemp -d /tmp/annuaire-identity-bench.XXXXXX)"
chmod 755 "$work"
serve_pid=""
hello_pid=""
stop_servers() {
    if [[ -n "$serve_pid" ]]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
    if [[ -n "$hello_pid" ]]; then kill "$hello_pid" 2>/dev/null || true; wait "$hello_pid" 2>/dev/null || true; fi
    serve_pid=""
    hello_pid=""
}
cleanup() {
    stop_servers
    pg_stop "$work"
}
trap cleanup EXIT
info "work folder: $work"

results="$work/results.md"
: >"$results"
summary="$work/summary.md"
: >"$summary"

mib() { awk -v k="$2" '$1 == k":" {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# wrk prints e.g. "     50%  412.00us" and "Requests/sec:   2401.53".
pct() { awk -v p="$2" '$1 == p {print $2}' "$1"; }
rps() { awk '/Requests\/sec/ {printf "%.0f", $2}' "$1"; }
errors() { awk '/Non-2xx|Socket errors/ {print}' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }'; }

# run_wrk NAME OUTFILE ARGS...: one wrk run; fails on any error or non-2xx answer.
run_wrk() {
    local name="$1" out="$2"
    shift 2
    info "  wrk: $name"
    wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$@" >"$out"
    if [[ -n "$(errors "$out")" ]]; then
        cat "$out" >&2
        die "wrk saw errors on $name"
    fi
}

# run_size BACKEND URL N
run_size() {
    local backend="$1" url="$2" n="$3"
    local dir="$work/$backend-$n"
    mkdir -p "$dir"
    info "[$backend, $n associations] building the dataset"
    local started ended
    started="$(date +%s.%N)"
    "$dataset" --database-url "$url" --terms "$PWD/terms.example.toml" \
        --associations "$n" --rules "$rules" --out "$dir/data" 2>"$dir/dataset.err"
    ended="$(date +%s.%N)"
    local build_s
    build_s="$(awk -v a="$started" -v b="$ended" 'BEGIN {printf "%.0f", b - a}')"
    local token
    token="$(cat "$dir/data/token")"

    local port hello_port
    port="$(free_port)"
    hello_port="$(free_port)"
    cat >"$dir/annuaire.toml" <<TOML
[server]
name = "bench.example"
data_dir = "$dir/var"
[http]
bind = "127.0.0.1:$port"
[database]
url = "$url"
[log]
level = "warn,annuaire::identity=info"
[policy]
allowlists_dir = "$dir/data/allowlists"
[terms]
file = "$PWD/terms.example.toml"
[rate_limits]
info_per_ip = { burst = 1000000000, every = "1ms" }
TOML
    "$hello" "127.0.0.1:$hello_port" 2>"$dir/hello.err" &
    hello_pid=$!
    local serve_started
    serve_started="$(date +%s.%N)"
    "$bin" --config "$dir/annuaire.toml" serve 2>"$dir/serve.err" &
    serve_pid=$!
    wait_until 120 "annuaire serve on $port" curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null
    wait_until 30 "hello world on $hello_port" curl -sf "http://127.0.0.1:$hello_port/" >/dev/null
    # The lookup index loads in the background; until then lookups go to the database.
    if [[ -z "${BENCH_NO_INDEX_WAIT:-}" ]]; then
        wait_until 600 "the lookup index" grep -q "lookup index loaded" "$dir/serve.err"
    fi
    local ready_s
    ready_s="$(awk -v a="$serve_started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')"
    local probe
    probe="$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$port/_matrix/identity/v2/hash_details")"
    [[ "$probe" == *lookup_pepper* ]] || die "hash_details answered: $probe"
    head -n1 "$dir/data/lookup-bodies.json" >"$dir/probe.json"
    probe="$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data-binary "@$dir/probe.json" "http://127.0.0.1:$port/_matrix/identity/v2/lookup")"
    [[ "$probe" == *'"mappings":{"'* ]] || die "lookup found nothing: ${probe:0:200}"
    sleep 1
    local rss_idle
    rss_idle="$(mib "$serve_pid" VmRSS)"

    local base="http://127.0.0.1:$port"
    declare -A rss
    run_wrk "hello world" "$dir/wrk-hello.out" "http://127.0.0.1:$hello_port/"
    run_wrk "hello world's /info (floor)" "$dir/wrk-hello-info.out" -s bench/identity-info.lua \
        "http://127.0.0.1:$hello_port" -- "$dir/data"
    run_wrk "ping" "$dir/wrk-ping.out" "$base/_matrix/identity/v2"
    rss[ping]="$(mib "$serve_pid" VmRSS)"
    run_wrk "hash_details" "$dir/wrk-hash.out" -H "Authorization: Bearer $token" \
        "$base/_matrix/identity/v2/hash_details"
    rss[hash]="$(mib "$serve_pid" VmRSS)"
    run_wrk "ping (Lua request loop)" "$dir/wrk-ping-lua.out" -s bench/identity-ping.lua "$base"
    run_wrk "info" "$dir/wrk-info.out" -s bench/identity-info.lua "$base" -- "$dir/data"
    rss[info]="$(mib "$serve_pid" VmRSS)"
    run_wrk "lookup" "$dir/wrk-lookup.out" -s bench/identity-lookup.lua "$base" -- "$dir/data" "$token"
    rss[lookup]="$(mib "$serve_pid" VmRSS)"
    run_wrk "ping (again)" "$dir/wrk-ping2.out" "$base/_matrix/identity/v2"
    run_wrk "hello world (again)" "$dir/wrk-hello2.out" "http://127.0.0.1:$hello_port/"
    local hwm
    hwm="$(mib "$serve_pid" VmHWM)"
    rss[end]="$(mib "$serve_pid" VmRSS)"
    stop_servers

    # The better of the two runs of the yardsticks (the machine is shared).
    local hello_rps ping_rps
    hello_rps="$(printf '%s\n%s\n' "$(rps "$dir/wrk-hello.out")" "$(rps "$dir/wrk-hello2.out")" | sort -n | tail -1)"
    ping_rps="$(printf '%s\n%s\n' "$(rps "$dir/wrk-ping.out")" "$(rps "$dir/wrk-ping2.out")" | sort -n | tail -1)"
    local f
    {
        echo "### $backend, $n associations, $rules rules"
        echo
        echo "- dataset built in $build_s s; annuaire ready (lookup index loaded) $ready_s s after start"
        echo "- resident memory (MiB): idle $rss_idle; after ping ${rss[ping]}, hash_details" \
            "${rss[hash]}, info ${rss[info]}, lookup ${rss[lookup]}; at the end ${rss[end]};" \
            "peak (VmHWM) $hwm"
        echo
        echo "| what | requests/s | p50 | p99 | ratio | target |"
        echo "|---|---|---|---|---|---|"
        f="$dir/wrk-hello.out"
        echo "| hello world (actix-web) | $hello_rps | $(pct "$f" 50%) | $(pct "$f" 99%) | | |"
        f="$dir/wrk-hello-info.out"
        echo "| hello world's \`/info\`: the query parsed, an answer of /info's size, no work (the floor) | $(rps "$f") | $(pct "$f" 50%) | $(pct "$f" 99%) |" \
            "$(ratio "$(rps "$f")" "$hello_rps") of hello world | (reference) |"
        f="$dir/wrk-ping.out"
        echo "| \`GET /_matrix/identity/v2\` (ping) | $ping_rps | $(pct "$f" 50%) | $(pct "$f" 99%) |" \
            "$(ratio "$ping_rps" "$hello_rps") of hello world | ≥ 85% |"
        f="$dir/wrk-hash.out"
        echo "| \`GET /v2/hash_details\` (Bearer) | $(rps "$f") | $(pct "$f" 50%) | $(pct "$f" 99%) |" \
            "$(ratio "$(rps "$f")" "$ping_rps") of ping | ≥ 70% |"
        f="$dir/wrk-ping-lua.out"
        echo "| ping through wrk's Lua request loop (as /info is driven) | $(rps "$f") | $(pct "$f" 50%) | $(pct "$f" 99%) |" \
            "$(ratio "$(rps "$f")" "$ping_rps") of ping | (reference) |"
        f="$dir/wrk-info.out"
        echo "| \`GET /api/v1/info\` | $(rps "$f") | $(pct "$f" 50%) | $(pct "$f" 99%) |" \
            "$(ratio "$(rps "$f")" "$ping_rps") of ping ($(ratio "$(rps "$f")" "$(rps "$dir/wrk-ping-lua.out")") of the Lua-driven ping) | ≥ 80% of ping |"
        f="$dir/wrk-lookup.out"
        echo "| \`POST /v2/lookup\`, 1,000 hashes, half bound | $(rps "$f") | $(pct "$f" 50%) | $(pct "$f" 99%) |" \
            "| ≥ 2,000 req/s, p99 < 20 ms |"
        echo
    } >>"$results"
    f="$dir/wrk-lookup.out"
    echo "| $backend | $n | $hello_rps | $ping_rps ($(ratio "$ping_rps" "$hello_rps")) |" \
        "$(rps "$dir/wrk-hash.out") ($(ratio "$(rps "$dir/wrk-hash.out")" "$ping_rps")) |" \
        "$(rps "$dir/wrk-info.out") ($(ratio "$(rps "$dir/wrk-info.out")" "$ping_rps")) |" \
        "$(rps "$f") (p50 $(pct "$f" 50%), p99 $(pct "$f" 99%)) | $rss_idle / $hwm |" >>"$summary"
}

for backend in $backends; do
    case "$backend" in
    sqlite)
        url="sqlite://$work/sqlite/annuaire.db"
        mkdir -p "$work/sqlite"
        ;;
    postgres)
        pg_start "$work"
        pg_url="$(cat "$work/pg/url")"
        "$PG_BIN/psql" "$pg_url" -X -q -c 'CREATE DATABASE bench' >/dev/null
        url="${pg_url%/postgres}/bench"
        ;;
    esac
    for n in "${size_list[@]}"; do
        run_size "$backend" "$url" "$n"
    done
    if [[ "$backend" == postgres ]]; then pg_stop "$work"; fi
done

{
    echo "# Identity hot paths benchmark"
    echo
    echo "Generated by \`bench/identity.sh --associations $sizes --rules $rules --duration $duration" \
        "--threads $threads --connections $connections\`${annuaire_bin:+ (annuaire: $annuaire_bin)} on $(date -u +%Y-%m-%d) at" \
        "$(git describe --always --dirty 2>/dev/null || echo unknown); $(nproc) CPUs" \
        "($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')), shared with" \
        "the load generator (wrk $threads threads × $connections connections, ${duration} s per run)."
    echo
    echo "Targets (issue 13): ping ≥ 85% of the hello world; hash_details ≥ 70% of the ping;"
    echo "/info ≥ 80% of the ping; lookup ≥ 2,000 req/s with p99 < 20 ms at 1M associations and"
    echo "within 20% of that at 100k and 5M; resident memory < 100 MiB through the run at 1M."
    echo "The hello world and the ping are each run twice (first and last) and the better run counts."
    echo
    echo "| backend | associations | hello world req/s | ping req/s (of hello) | hash_details req/s (of ping) | info req/s (of ping) | lookup req/s | RSS idle / peak MiB |"
    echo "|---|---|---|---|---|---|---|---|"
    cat "$summary"
    echo
    cat "$results"
} >"$out.tmp"
mv "$out.tmp" "$out"
trap - EXIT
cleanup
rm -f "$work"/sqlite/annuaire.db*
info "results: $out (raw outputs in $work)"
