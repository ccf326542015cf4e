#!/usr/bin/env bash
# `annuaire import sydent` at scale: a synthetic Sydent database of 300,000 associations.
#
# Usage: bench/sydent-import.sh [--associations N] [--no-postgres]
#
#   1. makes the Sydent database with Sydent's own schema code (scripts/sydent/synthetic.py:
#      N local binds with their signed global copies, N/100 from a peer, N/1000 forged, N/1000
#      unbinds, N/10 accounts with tokens and terms, N/100 invitations); kept in .cache/bench/
#      and reused;
#   2. builds the release binary;
#   3. on SQLite, then on PostgreSQL (a throwaway server, scripts/lib/postgres.sh: fsync off),
#      into an empty database: a dry run, the import, and the same import again (nothing left
#      to write: reading and checking only), each timed as a whole process.
# Results: bench/results/sydent-import.md. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
# shellcheck source=scripts/lib/postgres.sh
source scripts/lib/postgres.sh

associations=300000
with_postgres=1
while (($# > 0)); do
    case "$1" in
    --associations)
        associations="$2"
        shift
        ;;
    --no-postgres) with_postgres="" ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

cache="$ANNUAIRE_ROOT/.cache/bench"
mkdir -p "$cache"
source_db="$cache/sydent-$associations.db"
source_conf="$cache/sydent-$associations.conf"
if [[ ! -f "$source_db" || ! -f "$source_conf" ]]; then
    info "generating $source_db"
    partial="$cache/sydent-$associations.partial"
    rm -rf "$partial"
    mkdir -p "$partial"
    scripts/sydent/env.sh synthetic "$partial/sydent.db" "$associations"
    mv "$partial/sydent.conf" "$source_conf"
    mv "$partial/sydent.db" "$source_db"
    rmdir "$partial"
fi

info "building the release binary"
cargo build --release --quiet
target="${CARGO_TARGET_DIR:-$ANNUAIRE_ROOT/target}"
binary="$target/release/annuaire"

work="$(mktemp -d /tmp/annuaire-bench-sydent.XXXXXX)"
chmod 755 "$work"
trap 'pg_stop "$work" >/dev/null 2>&1 || true' EXIT
info "work folder: $work"

_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# run_import NAME URL ARGS...: times one import (wall clock, and the CPU time of the process:
# on a shared machine the second says more); its summary goes to $work/NAME.txt.
declare -A took cpu load
run_import() {
    local name="$1" url="$2"
    shift 2
    local t0 t1
    load[$name]="$(cut -d' ' -f1 /proc/loadavg)"
    t0="$(_ms)"
    ANNUAIRE_DATABASE__URL="$url" ANNUAIRE_SERVER__NAME=sydent.synthetic.example \
        /usr/bin/time -f '%U %S' -o "$work/$name.time" \
        "$binary" import sydent --db "$source_db" --sydent-config "$source_conf" "$@" \
        >"$work/$name.txt" 2>"$work/$name.progress"
    t1="$(_ms)"
    took[$name]=$((t1 - t0))
    cpu[$name]="$(awk '{printf "%.1f", $1 + $2}' "$work/$name.time")"
    printf '%-22s %7d ms (CPU %s s, load %s)\n' "$name" "${took[$name]}" "${cpu[$name]}" "${load[$name]}"
}

# The synthetic users' agencies are allowed, so that every one of them gets a directory entry.
mkdir -p "$work/allowlists"
cat >"$work/allowlists/agencies.toml" <<'TOML'
[organisation]
label = "Ministères"
homeserver = "hs0.gouv.example"

[[domain]]
name = "gouv.example"
subdomains = true
TOML
allow() {
    ANNUAIRE_DATABASE__URL="$1" "$binary" allowlist import "$work/allowlists" >/dev/null 2>&1 ||
        die "allowlist import failed"
}

mkdir -p "$work/sqlite"
sqlite_url="sqlite://$work/sqlite/annuaire.db"
allow "$sqlite_url"
run_import sqlite-dry-run "$sqlite_url" --dry-run
run_import sqlite-import "$sqlite_url"
run_import sqlite-again "$sqlite_url"

if [[ -n "$with_postgres" ]]; then
    pg_start "$work" >/dev/null
    pg_url="$(cat "$work/pg/url")"
    "$PG_BIN/psql" "$pg_url" -X -q -c "CREATE DATABASE bench_sydent"
    pg_bench_url="${pg_url%/*}/bench_sydent"
    allow "$pg_bench_url"
    run_import postgres-dry-run "$pg_bench_url" --dry-run
    run_import postgres-import "$pg_bench_url"
    run_import postgres-again "$pg_bench_url"
fi

summary_line="$(grep -m1 '^  associations' "$work/sqlite-import.txt" | sed 's/^ *//')"
directory_line="$(grep -m1 '^  directory' "$work/sqlite-import.txt" | sed 's/^ *//')"
{
    echo "# annuaire import sydent: $associations associations"
    echo
    echo "Measured by \`bench/sydent-import.sh\` on $(date -u +%Y-%m-%d), release build, on this machine:"
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')),"
    echo "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) of memory, shared with other work."
    echo
    echo "The Sydent database (\`scripts/sydent/synthetic.py\`, Sydent 2.6.1's own schema code):"
    echo "$associations local binds and their signed global copies, $((associations / 100)) associations"
    echo "replicated from a peer, $((associations / 1000)) forged ones, $((associations / 1000)) unbinds,"
    echo "$((associations / 10)) accounts with a token and accepted terms, $((associations / 100)) pending"
    echo "invitations with their ephemeral keys. Every global row's signature is checked; every"
    echo "user gets a directory entry (an allowlist for their domain is imported first)."
    echo
    echo "| run | SQLite | PostgreSQL |"
    echo "|---|---:|---:|"
    cell() { awk "BEGIN {printf \"%.1f s (CPU %s s, load %s)\", ${took[$1]} / 1000, ${cpu[$1]}, ${load[$1]}}"; }
    for run in dry-run import again; do
        pg_cell="-"
        if [[ -n "$with_postgres" ]]; then pg_cell="$(cell "postgres-$run")"; fi
        echo "| $run | $(cell "sqlite-$run") | $pg_cell |"
    done
    echo
    echo "\`dry-run\`: reading, checking and comparing only, into an empty database. \`import\`: the"
    echo "first import. \`again\`: the same import a second time (nothing to write). Each is the"
    echo "whole process (\`annuaire import sydent ...\`), migrations included: wall-clock time,"
    echo "the process's CPU time (user + system; signature checks use every core), and the load"
    echo "average when it started (other work on the machine slows the wall clock). The throwaway"
    echo "PostgreSQL server runs with fsync off."
    echo
    echo "The import said: \`$summary_line\`, \`$directory_line\`"
} >bench/results/sydent-import.md
info "wrote bench/results/sydent-import.md"
