#!/usr/bin/env bash
# The services the tests need (PostgreSQL 15 and OpenLDAP on random loopback ports, the Python
# venv with aiosmtpd) and the environment variables through which the tests find them.
#
# As a command, for developers who run `cargo test` by hand:
#   eval "$(scripts/lib/services.sh start)"   install what is missing, start the services once
#                                             (or reuse running ones), print `export ...` lines
#   eval "$(scripts/lib/services.sh env)"     print the same lines again (another shell)
#   scripts/lib/services.sh status            say whether they answer
#   scripts/lib/services.sh stop              stop them and remove their folder
# then e.g. `TEST_DATABASE=postgres cargo test --test it`.
#
# As a library (scripts/test sources it): services_start DIR, services_stop DIR, services_env DIR.
# Variables exported to the tests:
#   TEST_POSTGRES_URL        postgres://annuaire:annuaire@127.0.0.1:<port>/postgres (superuser:
#                            tests CREATE DATABASE their own)
#   TEST_PYTHON              <repo>/.venv/test/bin/python (aiosmtpd installed)
#   TEST_LDAP_URL            ldap://127.0.0.1:<port> (StartTLS offered)
#   TEST_LDAPS_URL           ldaps://127.0.0.1:<port> (the same server over TLS)
#   TEST_LDAP_CA_FILE        the throwaway CA that signed the server's certificate (PEM)
#   TEST_LDAP_BASE_DN        dc=agents,dc=example
#   TEST_LDAP_BIND_DN        cn=annuaire,ou=services,dc=agents,dc=example (read-only service account)
#   TEST_LDAP_BIND_PASSWORD  its password
#   TEST_LDAP_ROOT_DN, TEST_LDAP_ROOT_PASSWORD  the rootdn, for tests that change directory data
# The data is tests/fixtures/ldap/people.ldif (its header lists the accounts and passwords).

if [[ -n "${_ANNUAIRE_SERVICES_SH:-}" ]]; then return 0; fi
_ANNUAIRE_SERVICES_SH=1
_services_lib="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/lib/common.sh
source "$_services_lib/common.sh"
# shellcheck source=scripts/lib/install.sh
source "$_services_lib/install.sh"
# shellcheck source=scripts/lib/postgres.sh
source "$_services_lib/postgres.sh"
# shellcheck source=scripts/lib/ldap.sh
source "$_services_lib/ldap.sh"

# export NAME='value', single-quoted for any shell.
_export_line() {
    local q="'\\''"
    printf "export %s='%s'\n" "$1" "${2//\'/$q}"
}

# Starts PostgreSQL and slapd under DIR (which must exist; made traversable here because the
# PostgreSQL server runs as another user) and writes DIR/env.sh, a file of `export` lines.
services_start() {
    local dir="$1"
    chmod 755 "$dir"
    pg_start "$dir"
    ldap_start "$dir"
    {
        _export_line TEST_POSTGRES_URL "$(cat "$dir/pg/url")"
        _export_line TEST_PYTHON "$TEST_VENV/bin/python"
        local line
        while IFS= read -r line; do
            _export_line "${line%%=*}" "${line#*=}"
        done <"$dir/ldap/env"
    } >"$dir/env.sh"
}

services_stop() {
    local dir="$1"
    [[ -d "$dir" ]] || return 0
    ldap_stop "$dir"
    pg_stop "$dir"
    rm -f "$dir/env.sh"
}

services_env() {
    cat "$1/env.sh"
}

# True when both services of DIR answer.
services_alive() {
    local dir="$1"
    [[ -f "$dir/env.sh" ]] || return 1
    "$PG_BIN/psql" "$(cat "$dir/pg/url")" -X -q -At -c 'select 1' >/dev/null 2>&1 || return 1
    _ldap_answers "$(grep '^TEST_LDAP_URL=' "$dir/ldap/env" | cut -d= -f2-)" >/dev/null 2>&1
}

# ---- command-line use ----

# The folder of the developer's long-lived services is remembered here (git-ignored).
_services_pointer="$ANNUAIRE_ROOT/.cache/services.dir"

_services_current() {
    [[ -f "$_services_pointer" ]] && cat "$_services_pointer"
}

_services_main() {
    local cmd="${1:-}" dir
    case "$cmd" in
    start)
        dir="$(_services_current || true)"
        if [[ -n "$dir" ]] && services_alive "$dir"; then
            info "services already running in $dir"
            services_env "$dir"
            return
        fi
        if [[ -n "$dir" ]]; then
            info "services in $dir do not answer: restarting them"
            services_stop "$dir"
            rm -rf "$dir"
        fi
        install_system_packages
        install_test_venv
        dir="$(mktemp -d /tmp/annuaire-services.XXXXXX)"
        # A failed start leaves nothing running behind.
        trap 'services_stop "'"$dir"'"; rm -rf "'"$dir"'"; rm -f "$_services_pointer"' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        services_start "$dir"
        mkdir -p "$(dirname "$_services_pointer")"
        echo "$dir" >"$_services_pointer"
        trap - EXIT INT TERM
        info "services started in $dir; stop them with: scripts/lib/services.sh stop"
        services_env "$dir"
        ;;
    env)
        dir="$(_services_current)" || die "no services started: run scripts/lib/services.sh start"
        services_env "$dir"
        ;;
    status)
        dir="$(_services_current)" || die "no services started"
        if services_alive "$dir"; then
            info "running in $dir"
            services_env "$dir" | grep -v PASSWORD >&2
        else
            die "services in $dir do not answer: scripts/lib/services.sh start restarts them"
        fi
        ;;
    stop)
        dir="$(_services_current || true)"
        if [[ -z "$dir" ]]; then
            info "no services to stop"
            return
        fi
        services_stop "$dir"
        rm -rf "$dir"
        rm -f "$_services_pointer"
        info "services stopped"
        ;;
    *)
        sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
        [[ "$cmd" == "-h" || "$cmd" == "--help" ]] || exit 2
        ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    _services_main "$@"
fi
