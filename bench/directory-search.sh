#!/usr/bin/env bash
# Directory search benchmark: 5,500,000 synthetic entries (every potential Tchap user) on
# SQLite and on PostgreSQL.
#
# Usage: bench/directory-search.sh [--entries N] [--duration SECONDS] [--clients C]
#                                  [--no-postgres] [--no-sqlite] [--postgres-url URL]
#                                  [--sqlite-url sqlite:///PATH] [--out FILE]
#
# --postgres-url and --sqlite-url measure an existing database (filled before by
# `annuaire directory import-synthetic N --seed 1`, which the run migrates; it is left in
# place) instead of importing into a throwaway one: a 5.5M import takes 10 to 15 minutes.
#
# For each backend it
#   1. imports the entries with the release binary (`annuaire directory import-synthetic N`),
#   2. measures the domain function (`cargo bench --bench directory_search`: database query,
#      exact ranking, display names; p50/p99 per query and per class, in-process),
#   3. starts `annuaire serve` and drives POST /_matrix/client/v3/user_directory/search with wrk
#      for each class of queries, with one connection (closed loop: latency as one user sees
#      it) and with C concurrent connections (default 8), the caller's token checked once by a
#      whoami double and then cached,
#   4. reads the server's resident memory (VmRSS now, VmHWM peak).
# Queries: bench/queries/{1-term,2-terms,3-terms}.txt. Results: --out FILE (default
# bench/results/directory-search.md; raw outputs are kept in the work folder it prints).
#
# Needs wrk (`apt-get install wrk`) and, for PostgreSQL, the PostgreSQL 15 server binaries
# (scripts/lib/postgres.sh starts a throwaway server). Release builds; not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh

entries=5500000
duration=15
clients=8
with_postgres=1
with_sqlite=1
postgres_url=""
sqlite_url=""
out=bench/results/directory-search.md
while (($# > 0)); do
    case "$1" in
    --entries) entries="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --clients) clients="$2"; shift ;;
    --no-postgres) with_postgres="" ;;
    --no-sqlite) with_sqlite="" ;;
    --postgres-url) postgres_url="$2"; shift ;;
    --sqlite-url) sqlite_url="$2"; shift ;;
    --out) out="$2"; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
command -v wrk >/dev/null || die "wrk is not installed: apt-get install wrk"
command -v curl >/dev/null || die "curl is not installed"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
info "building the release binary and the benchmark"
cargo build --release --bin annuaire
cargo bench --bench directory_search --no-run
bin="$CARGO_TARGET_DIR/release/annuaire"

work="$(mktemp -d /tmp/annuaire-bench.XXXXXX)"
chmod 755 "$work"
serve_pid=""
whoami_pid=""
cleanup() {
    [[ -n "$serve_pid" ]] && kill "$serve_pid" 2>/dev/null || true
    [[ -n "$whoami_pid" ]] && kill "$whoami_pid" 2>/dev/null || true
    pg_stop "$work"
}
trap cleanup EXIT
info "work folder: $work"

# The homeserver's whoami, answering every token (the directory caches it for the run).
whoami_port="$(free_port)"
python3 - "$whoami_port" <<'PY' &
import http.server, json, sys
class Whoami(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"user_id": "@bench:bench.example"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Whoami).serve_forever()
PY
whoami_pid=$!

results="$work/results.md"
: >"$results"

# run_backend NAME DATABASE_URL
run_backend() {
    local name="$1" url="$2" dir="$work/$1"
    mkdir -p "$dir"
    local started ended import
    if [[ ("$name" == postgres && -n "$postgres_url") || ("$name" == sqlite && -n "$sqlite_url") ]]; then
        info "[$name] existing database: no import"
        (cd "$dir" && ANNUAIRE_DATABASE__URL="$url" ANNUAIRE_LOG__LEVEL=warn "$bin" migrate >/dev/null)
        import="not run (existing database)"
    else
        info "[$name] importing $entries synthetic entries"
        started="$(date +%s.%N)"
        (cd "$dir" && ANNUAIRE_DATABASE__URL="$url" ANNUAIRE_LOG__LEVEL=warn \
            "$bin" directory import-synthetic "$entries" --seed 1 >"$dir/import.out" 2>"$dir/import.err")
        ended="$(date +%s.%N)"
        import="$(printf '%.0f' "$(echo "$ended - $started" | bc)") s"
    fi
    local size
    if [[ "$name" == postgres ]]; then
        "$PG_BIN/psql" "$url" -X -q -c 'VACUUM ANALYZE directory_entries' \
            -c 'VACUUM ANALYZE directory_search' -c 'VACUUM ANALYZE directory_search_words' >/dev/null
        size="$("$PG_BIN/psql" "$url" -X -At -c "select pg_size_pretty(pg_database_size(current_database()))")"
    else
        size="$(du -sh "${url#sqlite://}" | cut -f1)"
    fi

    info "[$name] domain benchmark"
    DIRECTORY_BENCH_DATABASE_URL="$url" DIRECTORY_BENCH_ROUNDS=30 \
        cargo bench --bench directory_search 2>/dev/null >"$dir/domain.out"

    info "[$name] HTTP benchmark (wrk)"
    local port
    port="$(free_port)"
    cat >"$dir/annuaire.toml" <<TOML
[server]
name = "bench.example"
data_dir = "$dir/var"
[http]
bind = "127.0.0.1:$port"
[database]
url = "$url"
[log]
level = "warn"
[directory]
whoami_cache_ttl = "1h"
[directory.client_hosts."bench.local"]
server_name = "bench.example"
client_url = "http://127.0.0.1:$whoami_port"
TOML
    "$bin" --config "$dir/annuaire.toml" serve 2>"$dir/serve.err" &
    serve_pid=$!
    wait_until 60 "annuaire serve on $port" curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null
    local probe
    probe="$(curl -sf -H 'Host: bench.local' -H 'Authorization: Bearer bench-token' \
        -d '{"search_term":"jean dup"}' "http://127.0.0.1:$port/_matrix/client/v3/user_directory/search")"
    [[ "$probe" == *'"results":[{'* ]] || die "[$name] the endpoint returned no results: $probe"

    local class
    for class in 1-term 2-terms 3-terms; do
        wrk -t1 -c1 -d"${duration}s" --latency -s bench/directory-search.lua \
            "http://127.0.0.1:$port" -- "$class" >"$dir/wrk-$class.out"
        wrk -t2 -c"$clients" -d"${duration}s" --latency -s bench/directory-search.lua \
            "http://127.0.0.1:$port" -- "$class" >"$dir/wrk-$class-c$clients.out"
        local f
        for f in "$dir/wrk-$class.out" "$dir/wrk-$class-c$clients.out"; do
            if grep -q "Non-2xx\|Socket errors" "$f"; then
                cat "$f" >&2
                die "[$name] wrk saw errors"
            fi
        done
    done
    local rss hwm
    rss="$(awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$serve_pid/status")"
    hwm="$(awk '/VmHWM/ {print $2/1024 " MiB"}' "/proc/$serve_pid/status")"
    kill "$serve_pid"
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=""

    # wrk prints e.g. "     50%  412.00us" and "Requests/sec:   2401.53".
    pct() { awk -v p="$2" '$1 == p {print $2}' "$1"; }
    rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
    {
        echo "### $name"
        echo
        echo "- entries: $entries; import: $import; database size: $size"
        echo "- server memory after the runs: VmRSS $rss, peak VmHWM $hwm"
        echo
        echo "Through HTTP (wrk, ${duration} s per class and concurrency, whoami cached):"
        echo
        echo "| queries | clients | p50 | p99 | requests/s |"
        echo "|---|---|---|---|---|"
        for class in 1-term 2-terms 3-terms; do
            local f="$dir/wrk-$class.out"
            echo "| $class | 1 | $(pct "$f" 50%) | $(pct "$f" 99%) | $(rps "$f") |"
            f="$dir/wrk-$class-c$clients.out"
            echo "| $class | $clients | $(pct "$f" 50%) | $(pct "$f" 99%) | $(rps "$f") |"
        done
        echo
        echo "Domain function (\`directory::search\`, in-process, 30 rounds per query):"
        echo
        grep '^SUMMARY' "$dir/domain.out" | sed 's/^SUMMARY /- /'
        echo
        echo "<details><summary>per query</summary>"
        echo
        grep -v '^SUMMARY' "$dir/domain.out"
        echo "</details>"
        echo
    } >>"$results"
}

if [[ -n "$with_sqlite" ]]; then
    run_backend sqlite "${sqlite_url:-sqlite://$work/sqlite/annuaire.db}"
fi
if [[ -n "$with_postgres" && -n "$postgres_url" ]]; then
    run_backend postgres "$postgres_url"
elif [[ -n "$with_postgres" ]]; then
    pg_start "$work"
    pg_url="$(cat "$work/pg/url")"
    "$PG_BIN/psql" "$pg_url" -X -q -c 'CREATE DATABASE bench' >/dev/null
    run_backend postgres "${pg_url%/postgres}/bench"
fi

{
    echo "# Directory search benchmark"
    echo
    echo "Generated by \`bench/directory-search.sh\` on $(date -u +%Y-%m-%d) at" \
        "$(git describe --always --dirty 2>/dev/null || echo unknown);" \
        "$(nproc) CPUs ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')), shared with" \
        "the load generator. Release build; default settings (directory.search_candidates = 200)."
    echo
    cat <<'NOTES'
Target (issue 6): p50 < 3 ms and p99 < 15 ms per query on SQLite at 1,000,000 entries.

How a search runs (see `src/directory/service.rs`): the database applies the prefix query and
the visibility filters and returns at most `directory.search_candidates` (200) entries per tier,
unsorted; tiers are "every term a whole word", "all but the last", "every term a prefix" (tier 1
alone when it already has more than the limit); Rust ranks the candidates exactly. SQLite: FTS5
with prefix indexes for 1 to 8 letters (longer prefixes are cut to 8 and checked in Rust), each
tier in rowid order; when the broad tier is full, the narrower tiers' matches up to its last
rowid are picked out of its candidates and their queries read on from there.
PostgreSQL: `directory_search_words`, one row per word of each entry under a btree covering
the whole folded key and the filters; a tier is a range scan of its rarest term's words that
checks the other terms on the index tuples and stops at the limit, unless every term is
common (over 10,000 words expected): then GIN intersects the terms' prefix posting lists in
the 32 hash partitions of `directory_search`, one partition after the other.

Reading the figures: "1 connection" is a closed loop (latency as one user sees it, client and
server on the same 2 CPUs); "8 connections" shows throughput. The domain figures exclude HTTP.
PostgreSQL multi-term queries of common terms only are slower: a GIN bitmap is built whole for a
partition before its first row comes out. Target (issue 13, PostgreSQL at 5,500,000 entries, 8
clients): p50 < 5 ms, p99 < 25 ms. The PostgreSQL server is the test one
(scripts/lib/postgres.sh: default memory settings, fsync off, which does not matter for reads),
after `VACUUM ANALYZE`.

NOTES
    echo
    cat "$results"
} >"$out.tmp"
mv "$out.tmp" "$out"
trap - EXIT
cleanup
rm -f "$work"/sqlite/annuaire.db*
info "results: $out (raw outputs in $work)"
