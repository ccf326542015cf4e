# shellcheck shell=bash
# Installs what the tests need and is missing: Debian packages (slapd, ldap-utils, PostgreSQL 15
# server) and the Python venv .venv/test. Idempotent, and quick when everything is there.
# Sourced, never executed.

if [[ -n "${_ANNUAIRE_INSTALL_SH:-}" ]]; then return 0; fi
_ANNUAIRE_INSTALL_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
TEST_VENV="$ANNUAIRE_ROOT/.venv/test"
TEST_REQUIREMENTS="$ANNUAIRE_ROOT/tests/support/requirements.txt"

_apt_updated=""
_policy_rc_ours=""
_policy_rc_backup=""

# Installing a daemon package on Debian starts it (slapd would take port 389, postgresql-15 its
# system cluster on 5432). A policy-rc.d that exits 101 forbids every start during the install;
# whatever was there before is put back afterwards, even when the install fails.
_forbid_service_starts() {
    # A file left by an interrupted run of ours is not worth keeping: it is removed afterwards.
    if [[ -e /usr/sbin/policy-rc.d ]] && ! grep -q 'annuaire scripts/test' /usr/sbin/policy-rc.d; then
        _policy_rc_backup="$(mktemp /tmp/annuaire-policy-rc.XXXXXX)"
        cp -p /usr/sbin/policy-rc.d "$_policy_rc_backup"
    fi
    printf '#!/bin/sh\n# annuaire scripts/test: no service starts while installing\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    _policy_rc_ours=1
}

# Also called from the exit trap of scripts/test, so an interrupted install restores it too.
restore_service_starts() {
    [[ -n "$_policy_rc_ours" ]] || return 0
    _policy_rc_ours=""
    if [[ -n "$_policy_rc_backup" ]]; then
        mv -f "$_policy_rc_backup" /usr/sbin/policy-rc.d
        _policy_rc_backup=""
    else
        rm -f /usr/sbin/policy-rc.d
    fi
}

# apt_install PACKAGE...: installs without prompts and without starting any service.
apt_install() {
    [[ $EUID -eq 0 ]] || die "missing packages ($*): run as root, or install them: apt-get install $*"
    info "installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    _forbid_service_starts
    local rc=0 log
    log="$(mktemp /tmp/annuaire-apt.XXXXXX)"
    {
        if [[ -z "$_apt_updated" ]]; then
            apt-get update -qq -o DPkg::Lock::Timeout=120 && _apt_updated=1
        fi &&
            apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" \
                >"$log" 2>&1
    } || rc=$?
    restore_service_starts
    if ((rc != 0)); then
        log_tail "$log" 30
        die "apt-get install $* failed (exit $rc)"
    fi
    rm -f "$log"
}

# Debian packages the tests need: slapd + ldap-utils for the throwaway directory, the PostgreSQL 15
# server binaries, a Python able to make venvs (for aiosmtpd and, later, Synapse).
install_system_packages() {
    local missing=()
    [[ -x /usr/sbin/slapd && -x /usr/sbin/slapadd && -f /usr/lib/ldap/back_mdb.so ]] || missing+=(slapd)
    command -v ldapsearch >/dev/null 2>&1 || missing+=(ldap-utils)
    [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]] || missing+=(postgresql-15)
    [[ -x "$PG_BIN/psql" ]] || missing+=(postgresql-client-15)
    if ! command -v python3 >/dev/null 2>&1; then
        missing+=(python3 python3-venv)
    elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if ((${#missing[@]} > 0)); then
        apt_install "${missing[@]}"
    fi
    # Check the result, so a half-installed machine fails here with a clear reason.
    [[ -f /usr/lib/ldap/back_mdb.so ]] || die "slapd is installed but /usr/lib/ldap/back_mdb.so is missing"
    [[ -x "$PG_BIN/initdb" ]] || die "PostgreSQL 15 server binaries missing at $PG_BIN"
    [[ -f /usr/share/postgresql/15/extension/pg_trgm.control ]] ||
        die "PostgreSQL extension pg_trgm is missing (directory search needs it): apt-get install postgresql-contrib"
    if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        die "user 'postgres' does not exist (it comes with postgresql-common): cannot run initdb as root"
    fi
    # wrk drives the benchmarks only (not this script): say whether it is there, do not install it.
    if ! command -v wrk >/dev/null 2>&1; then
        info "note: wrk is not installed (benchmarks only: apt-get install wrk)"
    fi
}

# The test venv: Python packages the Rust tests drive (aiosmtpd as a real SMTP server). Rebuilt
# only when requirements.txt or the interpreter changed; a stamp file records what was installed.
install_test_venv() {
    [[ -f "$TEST_REQUIREMENTS" ]] || die "missing $TEST_REQUIREMENTS"
    local want have=""
    want="$(sha256sum "$TEST_REQUIREMENTS" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version.split()[0])')"
    [[ -f "$TEST_VENV/.annuaire-stamp" ]] && have="$(cat "$TEST_VENV/.annuaire-stamp")"
    if [[ "$want" == "$have" && -x "$TEST_VENV/bin/python" ]] && "$TEST_VENV/bin/python" -c 'pass' 2>/dev/null; then
        return 0
    fi
    info "creating Python venv $TEST_VENV"
    rm -rf "$TEST_VENV"
    python3 -m venv "$TEST_VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
    "$TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$TEST_REQUIREMENTS" || die "pip install -r $TEST_REQUIREMENTS failed"
    echo "$want" >"$TEST_VENV/.annuaire-stamp"
}
