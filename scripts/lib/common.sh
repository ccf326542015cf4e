# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/lib/*.sh: messages, timing, ports, waiting.
# Sourced, never executed. Messages go to stderr so that stdout stays usable for `export` lines.

if [[ -n "${_ANNUAIRE_COMMON_SH:-}" ]]; then return 0; fi
_ANNUAIRE_COMMON_SH=1

# shellcheck disable=SC2034 # used by the files that source this one
ANNUAIRE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

info() { printf '%s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Seconds since the epoch, for stage durations.
now_s() { date +%s; }

# Runs a command as the PostgreSQL user when we are root (initdb and postgres refuse to run as
# root); as ourselves otherwise, so a developer without root can still use the same functions.
as_pg_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Prints a TCP port on 127.0.0.1 that is free right now. The kernel picks it (bind to port 0), so
# two concurrent runs on one machine do not collide; callers still retry if the server loses the
# race between this probe and its own bind.
free_port() {
    local py
    py="$(command -v python3 || true)"
    if [[ -n "$py" ]]; then
        "$py" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
        return
    fi
    # Fallback without Python: a random high port that nothing listens on.
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! ss -Htln "sport = :$port" | grep -q .; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found"
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_until() {
    local timeout="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + timeout))
    while ! "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            warn "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}

# Prints the last lines of a log file, indented, to explain a failure.
log_tail() {
    local file="$1" lines="${2:-40}"
    if [[ -f "$file" ]]; then
        info "---- last $lines lines of $file ----"
        tail -n "$lines" "$file" | sed 's/^/    /' >&2
        info "----"
    else
        info "(no log at $file)"
    fi
}

# Terminates a process group started with setsid (its id is the leader's pid): TERM, a grace
# period, then KILL. Only the group we started: never by name.
kill_group() {
    local pgid="$1"
    [[ -n "$pgid" ]] || return 0
    kill -TERM -- "-$pgid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 -- "-$pgid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
}
