# shellcheck shell=bash
# The Debian package, for the `package` stage of scripts/test: built with cargo-deb, installed
# with dpkg, checked, purged, and the machine checked to be as it was before. Needs root.
# Sourced, never executed: package_stage DIR, package_cleanup (from the exit trap).
#
# The package is made from the debug binary that the test stages and the e2e journey already
# built: a release build takes many minutes on CI's two cores, and what this stage checks is the
# packaging (files, conffile, unit, maintainer scripts, dependencies), not the optimiser.
# `cargo deb --no-build --profile dev` takes the binary from $CARGO_TARGET_DIR/debug/ (cargo-deb
# reads the asset `target/release/annuaire` as "the selected profile's folder"). cargo-deb warns
# that it means the dev profile to be refused one day: its version is pinned below. Releases are
# built with a plain `cargo deb` (docs/operations.md).
#
# What it checks: the Depends field names what the binary links (libc6, libpq5); the conffile;
# `systemd-analyze verify` of the installed unit, and its exposure score; the configuration's
# owner and mode and the state folder's; `annuaire check-config` of the installed configuration,
# as root and as the service's user; a short start of the installed binary as that user, with
# the packaged configuration (ports moved to free ones); when systemd runs the machine, a start
# through the unit itself; then `dpkg --purge` and that nothing named annuaire is left in /etc,
# /usr, /var, /run, /opt and /srv. The system user `annuaire`, which the package keeps on
# purpose (Debian practice), is removed by this stage when it did not exist before.

if [[ -n "${_ANNUAIRE_PACKAGE_SH:-}" ]]; then return 0; fi
_ANNUAIRE_PACKAGE_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"

CARGO_DEB_VERSION="3.8.0"
# Where cargo-deb is installed (kept between runs; CI may point it at a cache of its own).
CARGO_DEB_ROOT="${CARGO_DEB_ROOT:-$ANNUAIRE_ROOT/.cache/cargo-deb}"
PACKAGE_UNIT=/usr/lib/systemd/system/annuaire.service
PACKAGE_CONFIG=/etc/annuaire/annuaire.toml
# Shared by every checkout on the machine: one package stage at a time.
PACKAGE_LOCK=/tmp/annuaire-package-stage.lock

_pkg_installed=""
_pkg_user_ours=""
_pkg_server_pgid=""
_pkg_dropin=""
# For scripts/test's summary line.
# shellcheck disable=SC2034
package_note=""

# Paths named like the package in the system folders (a sorted list, one per line). A checkout
# or a target folder that happens to live there is not the package's; neither is systemd's
# bookkeeping of units it ran (/run/systemd/units).
_pkg_footprint() {
    local skip=("$ANNUAIRE_ROOT" /run/systemd/units)
    if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then skip+=("$(realpath -m "$CARGO_TARGET_DIR")"); fi
    local prune=() p
    for p in "${skip[@]}"; do prune+=(-path "$p" -prune -o); done
    find /etc /usr /var /run /opt /srv -xdev "${prune[@]}" -name '*annuaire*' -print 2>/dev/null |
        LC_ALL=C sort
}

# The tools: dpkg-shlibdeps (without it cargo-deb silently leaves $auto dependencies out),
# systemd-analyze, strip (cargo-deb strips the binary), curl; cargo-deb in .cache/.
_pkg_tools() {
    local missing=()
    command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v strip >/dev/null 2>&1 || missing+=(binutils)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if ((${#missing[@]} > 0)); then apt_install "${missing[@]}"; fi
    if [[ "$("$CARGO_DEB_ROOT/bin/cargo-deb" --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]]; then
        info "installing cargo-deb $CARGO_DEB_VERSION into $CARGO_DEB_ROOT"
        local build
        build="$(mktemp -d /tmp/annuaire-cargo-deb.XXXXXX)"
        cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet \
            --root "$CARGO_DEB_ROOT" --target-dir "$build" || {
            rm -rf "$build"
            die "cargo install cargo-deb failed"
        }
        rm -rf "$build"
    fi
}

# Refuses to touch a machine where annuaire is installed or has left state: the stage would
# purge it.
_pkg_preflight() {
    [[ $EUID -eq 0 ]] || die "the package stage installs a package: run it as root (or skip it)"
    local status
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' annuaire 2>/dev/null || true)"
    if [[ -n "$status" && "$status" != "un "* ]]; then
        die "the annuaire package is known to dpkg here (status '$status'): the package stage would purge it; dpkg --purge annuaire first, or run the stage elsewhere"
    fi
    local path
    for path in /etc/annuaire /var/lib/annuaire "$PACKAGE_UNIT" /usr/bin/annuaire; do
        [[ ! -e "$path" ]] || die "$path exists: the package stage would delete or replace it"
    done
    if getent passwd annuaire >/dev/null; then
        info "   the user annuaire exists already: it will be left in place"
    else
        _pkg_user_ours=1
    fi
}

# _pkg_field DEB FIELD: a control field of the package.
_pkg_field() { dpkg-deb -f "$1" "$2"; }

# Installs the packages the .deb depends on that are missing (dpkg -i does not).
_pkg_dependencies() {
    local deb="$1" dep name missing=()
    while IFS= read -r dep; do
        name="${dep%% *}"
        name="${name%%|*}"
        [[ -n "$name" ]] || continue
        if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$name" 2>/dev/null)" != "ii " ]]; then
            missing+=("$name")
        fi
    done < <(_pkg_field "$deb" Depends | tr ',' '\n' | sed 's/^ *//')
    if ((${#missing[@]} > 0)); then apt_install "${missing[@]}"; fi
}

# Starts the installed binary as the service's user with the packaged configuration (ports
# moved to free ones), checks what it serves where, and stops it.
_pkg_smoke_start() {
    local dir="$1" port admin
    port="$(free_port)"
    admin="$(free_port)"
    (
        cd /var/lib/annuaire || exit 1
        exec setsid setpriv --reuid=annuaire --regid=annuaire --init-groups \
            env ANNUAIRE_HTTP__BIND="127.0.0.1:$port" ANNUAIRE_HTTP__ADMIN_BIND="127.0.0.1:$admin" \
            /usr/bin/annuaire --config "$PACKAGE_CONFIG" serve
    ) >"$dir/serve.log" 2>&1 &
    _pkg_server_pgid=$!
    if ! wait_until 60 "the installed annuaire" curl -fsS "http://127.0.0.1:$port/health/ready"; then
        log_tail "$dir/serve.log"
        die "the installed annuaire did not become ready as user annuaire"
    fi
    local code
    code="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/metrics")"
    [[ "$code" == 404 ]] || die "the public listener answers $code for /metrics (http.admin_bind should keep it off)"
    curl -fsS "http://127.0.0.1:$admin/metrics" | grep -q '^annuaire_http_requests_total' ||
        die "no annuaire_http_requests_total on the admin listener's /metrics"
    # What `systemctl reload annuaire` sends (ExecReload): a reload, not the end of the process.
    kill -HUP "$_pkg_server_pgid"
    wait_until 30 "the reload on SIGHUP" grep -q 'configuration reloaded' "$dir/serve.log" || {
        log_tail "$dir/serve.log"
        die "the installed annuaire did not reload on SIGHUP"
    }
    curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null ||
        die "the installed annuaire does not answer after SIGHUP"
    kill -TERM "$_pkg_server_pgid"
    local rc=0
    wait "$_pkg_server_pgid" || rc=$?
    _pkg_server_pgid=""
    ((rc == 0)) || {
        log_tail "$dir/serve.log"
        die "the installed annuaire exited with $rc on SIGTERM"
    }
    grep -q 'annuaire stopped' "$dir/serve.log" || die "the installed annuaire did not log its stop"
    [[ "$(stat -c '%U' /var/lib/annuaire/annuaire.db)" == annuaire ]] ||
        die "the SQLite database is not owned by annuaire"
    echo "   served /health/ready on 127.0.0.1:$port and /metrics on 127.0.0.1:$admin as user annuaire; reloaded on SIGHUP; stopped cleanly"
}

# When systemd runs this machine: the unit itself, hardening included, serves /health/ready
# (ports moved by a runtime drop-in that goes away with the stage).
_pkg_unit_start() {
    local port admin
    port="$(free_port)"
    admin="$(free_port)"
    _pkg_dropin=/run/systemd/system/annuaire.service.d
    mkdir -p "$_pkg_dropin"
    printf '[Service]\nEnvironment=ANNUAIRE_HTTP__BIND=127.0.0.1:%s ANNUAIRE_HTTP__ADMIN_BIND=127.0.0.1:%s\n' \
        "$port" "$admin" >"$_pkg_dropin/scripts-test.conf"
    systemctl daemon-reload
    systemctl start annuaire.service
    if ! wait_until 60 "annuaire.service" curl -fsS "http://127.0.0.1:$port/health/ready"; then
        journalctl -u annuaire.service --no-pager -n 40 >&2 || true
        die "annuaire.service did not become ready"
    fi
    systemctl reload annuaire.service
    curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null || {
        journalctl -u annuaire.service --no-pager -n 40 >&2 || true
        die "annuaire.service does not answer after systemctl reload"
    }
    systemctl stop annuaire.service
    _pkg_remove_dropin
    echo "   annuaire.service (systemd) served /health/ready on 127.0.0.1:$port, reloaded and stopped"
}

_pkg_remove_dropin() {
    [[ -n "$_pkg_dropin" ]] || return 0
    rm -rf "$_pkg_dropin"
    _pkg_dropin=""
    systemctl daemon-reload || true
}

# package_stage DIR: the whole stage, working in DIR (a fresh folder).
package_stage() {
    local dir="$1" t0 t
    t0="$(now_s)"
    local lock_fd
    exec {lock_fd}>"$PACKAGE_LOCK"
    flock -w 900 "$lock_fd" || die "another package stage has held $PACKAGE_LOCK for 15 minutes"
    _pkg_preflight
    _pkg_tools
    cargo build --quiet --bin annuaire
    local bin="${CARGO_TARGET_DIR:-target}/debug/annuaire"
    [[ -x "$bin" ]] || die "no debug binary at $bin"
    local before
    before="$(_pkg_footprint)"

    t="$(now_s)"
    local deb="$dir/annuaire.deb"
    PATH="$CARGO_DEB_ROOT/bin:$PATH" cargo deb --no-build --profile dev --fast \
        --output "$deb" >"$dir/cargo-deb.log" 2>&1 || {
        cat "$dir/cargo-deb.log" >&2
        die "cargo deb failed"
    }
    local build_s=$(($(now_s) - t))
    echo "   built $(basename "$deb") ($(du -h "$deb" | cut -f1)) in ${build_s} s: $(_pkg_field "$deb" Package) $(_pkg_field "$deb" Version)"
    echo "   Depends: $(_pkg_field "$deb" Depends)"
    _pkg_field "$deb" Depends | grep -Eq '(^|, )libc6( |,|$)' || die "Depends lacks libc6"
    if ldd "$bin" | grep -q 'libpq\.so\.5'; then
        _pkg_field "$deb" Depends | grep -Eq '(^|, )libpq5( |,|$)' ||
            die "the binary links libpq.so.5 but Depends lacks libpq5"
    fi
    dpkg-deb -c "$deb" | sed 's/^/   /'

    t="$(now_s)"
    _pkg_dependencies "$deb"
    _pkg_installed=1
    dpkg -i "$deb" >"$dir/dpkg-install.log" 2>&1 || {
        cat "$dir/dpkg-install.log" >&2
        die "dpkg -i failed"
    }
    local install_s=$(($(now_s) - t))
    echo "   dpkg -i: ${install_s} s"

    dpkg-query -W -f='${Conffiles}\n' annuaire | grep -q "^ $PACKAGE_CONFIG " ||
        die "$PACKAGE_CONFIG is not a conffile of the installed package"
    [[ "$(stat -c '%U:%G %a' "$PACKAGE_CONFIG")" == "root:annuaire 640" ]] ||
        die "$PACKAGE_CONFIG is $(stat -c '%U:%G %a' "$PACKAGE_CONFIG"), expected root:annuaire 640"
    [[ "$(stat -c '%U:%G %a' /var/lib/annuaire)" == "annuaire:annuaire 750" ]] ||
        die "/var/lib/annuaire is $(stat -c '%U:%G %a' /var/lib/annuaire), expected annuaire:annuaire 750"
    [[ -d /etc/annuaire/allowlists ]] || die "/etc/annuaire/allowlists was not created"

    local verify rc=0
    verify="$(systemd-analyze verify "$PACKAGE_UNIT" 2>&1)" || rc=$?
    echo "   systemd-analyze verify $PACKAGE_UNIT: exit $rc${verify:+, said:}"
    [[ -z "$verify" ]] || printf '%s\n' "$verify" | sed 's/^/     /'
    ((rc == 0)) || die "systemd-analyze verify failed"
    if printf '%s\n' "$verify" | grep -q 'annuaire\.service'; then
        die "systemd-analyze verify complains about annuaire.service"
    fi
    local exposure
    exposure="$(systemd-analyze security --offline=true "$PACKAGE_UNIT" 2>/dev/null |
        sed -n 's/.*Overall exposure level for annuaire.service: \([0-9.]*\).*/\1/p')"
    [[ -n "$exposure" ]] || die "systemd-analyze security gave no exposure level"
    echo "   systemd-analyze security: exposure $exposure (0 = fully hardened, 10 = none)"
    awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' ||
        die "the unit's exposure level is $exposure: some hardening was lost (it was 1.2)"

    echo "   annuaire check-config --config $PACKAGE_CONFIG:"
    /usr/bin/annuaire --config "$PACKAGE_CONFIG" check-config | sed 's/^/     /'
    setpriv --reuid=annuaire --regid=annuaire --init-groups \
        /usr/bin/annuaire --config "$PACKAGE_CONFIG" check-config >/dev/null ||
        die "the service's user cannot use $PACKAGE_CONFIG"

    _pkg_smoke_start "$dir"
    if [[ -d /run/systemd/system ]]; then
        _pkg_unit_start
    else
        echo "   systemd does not run this machine: the unit was verified, not started"
    fi

    t="$(now_s)"
    dpkg --purge annuaire >"$dir/dpkg-purge.log" 2>&1 || {
        cat "$dir/dpkg-purge.log" >&2
        die "dpkg --purge failed"
    }
    _pkg_installed=""
    local purge_s=$(($(now_s) - t))
    echo "   dpkg --purge: ${purge_s} s"

    if dpkg-query -W -f='${db:Status-Abbrev}' annuaire 2>/dev/null | grep -qv '^un'; then
        die "dpkg still knows annuaire after the purge"
    fi
    local after
    after="$(_pkg_footprint)"
    if [[ "$after" != "$before" ]]; then
        diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed 's/^/   /' >&2
        die "the purge left files behind (> lines above)"
    fi
    local path
    while IFS= read -r path; do
        [[ -d "/$path" || ! -e "/$path" ]] || die "/$path is still there after the purge"
    done < <(dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./||')
    if getent passwd annuaire >/dev/null && [[ -n "$_pkg_user_ours" ]]; then
        echo "   the package kept the system user annuaire (as designed); removing it"
        _pkg_remove_user
    fi
    echo "   nothing of the package is left"
    # shellcheck disable=SC2034 # read by scripts/test
    package_note="build ${build_s} s, install ${install_s} s, purge ${purge_s} s, total $(($(now_s) - t0)) s"
    flock -u "$lock_fd"
    exec {lock_fd}>&-
}

_pkg_remove_user() {
    [[ -n "$_pkg_user_ours" ]] || return 0
    if getent passwd annuaire >/dev/null; then userdel annuaire; fi
    if getent group annuaire >/dev/null; then groupdel annuaire; fi
    _pkg_user_ours=""
}

# From scripts/test's exit trap: puts the machine back after a failure half-way.
package_cleanup() {
    if [[ -n "$_pkg_server_pgid" ]]; then kill_group "$_pkg_server_pgid"; fi
    _pkg_server_pgid=""
    if [[ -n "$_pkg_dropin" ]]; then
        systemctl stop annuaire.service 2>/dev/null || true
        _pkg_remove_dropin
    fi
    if [[ -n "$_pkg_installed" ]]; then
        warn "purging the annuaire package this run installed"
        dpkg --purge annuaire >/dev/null 2>&1 || warn "dpkg --purge annuaire failed: purge it by hand"
        _pkg_installed=""
    fi
    if [[ -n "$_pkg_user_ours" ]] && getent passwd annuaire >/dev/null; then
        _pkg_remove_user || warn "could not remove the user annuaire: userdel annuaire"
    fi
}
