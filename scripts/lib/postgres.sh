# shellcheck shell=bash
# A throwaway PostgreSQL 15 server for the tests: loopback only, random port, in a temporary
# directory, fsync off. Sourced, never executed.
#
#   pg_start DIR   initdb in DIR/pg, start, create the superuser role annuaire/annuaire,
#                  write DIR/pg/url (the TEST_POSTGRES_URL)
#   pg_stop DIR    stop that server (fast, then KILL) and remove DIR/pg

if [[ -n "${_ANNUAIRE_POSTGRES_SH:-}" ]]; then return 0; fi
_ANNUAIRE_POSTGRES_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"

pg_start() {
    local dir="$1"
    local pgdir="$dir/pg"
    local data="$pgdir/data" sock="$pgdir/run" log="$pgdir/server.log"
    [[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL 15 server binaries not found in $PG_BIN"

    # initdb and postgres refuse to run as root: as root the server runs as 'postgres', which must
    # own its folder and be able to traverse every parent (DIR is made 755 by the caller).
    mkdir -p "$pgdir" "$sock"
    if [[ $EUID -eq 0 ]]; then chown -R postgres:postgres "$pgdir"; fi
    chmod 700 "$pgdir"

    # C.UTF-8 always exists on Debian 12 (no locale generation needed) and keeps UTF-8 encoding.
    if ! as_pg_user "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$pgdir/initdb.log" 2>&1; then
        log_tail "$pgdir/initdb.log"
        die "PostgreSQL initdb failed"
    fi
    # Test settings: durability off (the data is thrown away), enough connections for parallel
    # tests each holding a pool, sockets only inside our folder, TCP only on loopback.
    cat >>"$data/postgresql.conf" <<CONF

# annuaire scripts/lib/postgres.sh (throwaway test server)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
log_min_error_statement = panic
log_connections = on
CONF

    local port="" attempt started=""
    for attempt in 1 2 3; do
        port="$(free_port)"
        if as_pg_user "$PG_BIN/pg_ctl" -D "$data" -l "$log" -o "-p $port" -w -t 30 start >/dev/null 2>&1; then
            started=1
            break
        fi
        # Lost the race for the port to another process: try another one; anything else is fatal.
        if ! grep -q "could not bind\|Address already in use" "$log" 2>/dev/null; then
            break
        fi
        warn "PostgreSQL: port $port taken, retrying (attempt $attempt)"
    done
    if [[ -z "$started" ]]; then
        log_tail "$log"
        die "PostgreSQL 15 did not start (see the server log above); the tests cannot run without it"
    fi

    if ! "$PG_BIN/psql" -h "$sock" -p "$port" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE annuaire LOGIN SUPERUSER PASSWORD 'annuaire'" >/dev/null; then
        log_tail "$log"
        die "PostgreSQL: could not create role annuaire"
    fi
    local url="postgres://annuaire:annuaire@127.0.0.1:$port/postgres"
    # Prove the URL the tests will use works over TCP with the password.
    if ! "$PG_BIN/psql" "$url" -X -q -At -c 'select 1' >/dev/null; then
        log_tail "$log"
        die "PostgreSQL started but $url does not accept connections"
    fi
    echo "$port" >"$pgdir/port"
    echo "$url" >"$pgdir/url"
    info "PostgreSQL 15 on 127.0.0.1:$port (data $data)"
}

pg_stop() {
    local dir="$1"
    local pgdir="$dir/pg"
    [[ -d "$pgdir" ]] || return 0
    local data="$pgdir/data"
    if [[ -f "$data/postmaster.pid" ]]; then
        if ! as_pg_user "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 20 stop >/dev/null 2>&1; then
            # Fast shutdown did not finish: kill the postmaster we started (its pid is the first
            # line of its pid file); its backends exit when they notice it is gone.
            local pid
            pid="$(head -n1 "$data/postmaster.pid" 2>/dev/null || true)"
            if [[ -n "$pid" ]]; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    fi
    rm -rf "$pgdir"
}
