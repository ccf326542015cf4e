#!/usr/bin/env bash
# Real Synapse homeservers for the end-to-end journey (issue 7). See shared SYNAPSE.md.
#
# As a library (source it):
#   synapse_install                       .venv/synapse with matrix-synapse and threepid-checker
#                                         (pinned below), quick when already there; then the
#                                         annuaire-synapse module from contrib/synapse, as
#                                         operators install it (pip install contrib/synapse)
#   synapse_configure DIR SERVER_NAME PORT SMTP_PORT IS_URL
#                                         write DIR/homeserver.yaml (+ log config) and the
#                                         signing key, for a homeserver on 127.0.0.1:PORT whose
#                                         threepid-checker asks IS_URL/_matrix/identity/api/v1/internal-info
#                                         and whose mail goes to 127.0.0.1:SMTP_PORT (no TLS)
#   synapse_start DIR                     start it in the background, wait for GET /health = 200
#   synapse_stop DIR                      stop it (its process group)
#   synapse_url DIR                       print its base URL (http[s]://127.0.0.1:PORT)
#   synapse_register DIR USER PASSWORD [--admin]
#                                         create a user with the shared-secret admin API; prints
#                                         the JSON answer (user_id, access_token, device_id)
#   tls_make_certs DIR                    a throwaway CA (DIR/ca.crt) and a leaf for 127.0.0.1 and
#                                         localhost signed by it (DIR/leaf.crt, DIR/leaf.key): rustls
#                                         refuses a self-signed certificate used as its own CA
# Optional environment for synapse_configure:
#   SYNAPSE_TLS_CERT, SYNAPSE_TLS_KEY     serve the listener over TLS with this certificate (needed
#                                         for federation between homeservers: it is always https);
#                                         outbound certificate checks are then off (test only)
#   SYNAPSE_SHARED_SECRET                 registration_shared_secret (default: random, kept in DIR)
#   SYNAPSE_EXTRA_YAML                    text appended to homeserver.yaml
#   SYNAPSE_ANNUAIRE_URL, SYNAPSE_ANNUAIRE_TOKEN_FILE
#                                         run annuaire's module (annuaire_synapse.AnnuaireModule)
#                                         with this url and token_file
# Optional environment for synapse_start:
#   SYNAPSE_CA_FILE                       the CA the module trusts for annuaire's certificate
#                                         (SSL_CERT_FILE in Synapse's environment)
#
# As a command: scripts/e2e/synapse-env.sh install | selftest
#   selftest installs, starts two homeservers over TLS (server names 127.0.0.1:<port>), registers
#   a user on each (checked with /whoami), has B invite A's user into a room over federation and
#   A's user join it, stops both, and prints the timings.

if [[ -n "${_ANNUAIRE_SYNAPSE_ENV_SH:-}" ]]; then return 0; fi
_ANNUAIRE_SYNAPSE_ENV_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

SYNAPSE_VERSION="1.163.2"
THREEPID_CHECKER_VERSION="1.0.1"
SYNAPSE_VENV="$ANNUAIRE_ROOT/.venv/synapse"
SYNAPSE_PYTHON="$SYNAPSE_VENV/bin/python"

synapse_install() {
    local want="matrix-synapse==$SYNAPSE_VERSION threepid-checker==$THREEPID_CHECKER_VERSION"
    if [[ -x "$SYNAPSE_PYTHON" && "$(cat "$SYNAPSE_VENV/.annuaire-stamp" 2>/dev/null)" == "$want" ]] &&
        "$SYNAPSE_PYTHON" -c 'import importlib.util as u, sys
sys.exit(not (u.find_spec("synapse") and u.find_spec("threepid_checker")))' 2>/dev/null; then
        return 0
    fi
    info "installing $want into $SYNAPSE_VENV"
    rm -rf "$SYNAPSE_VENV"
    python3 -m venv "$SYNAPSE_VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
    # shellcheck disable=SC2086 # $want is two requirement specifiers
    "$SYNAPSE_PYTHON" -m pip install --quiet --disable-pip-version-check --no-input $want ||
        die "pip install $want failed"
    echo "$want" >"$SYNAPSE_VENV/.annuaire-stamp"
}

# annuaire's module from this checkout, reinstalled every time (it is small), exactly as
# operators install it: `pip install contrib/synapse` (pip builds it in an isolated environment
# with setuptools from PyPI; --no-deps: it has none, and Synapse's own stay as they are). The
# build folder it may leave in the checkout is removed.
synapse_install_module() {
    local src="$ANNUAIRE_ROOT/contrib/synapse"
    "$SYNAPSE_PYTHON" -m pip install --quiet --disable-pip-version-check --no-input --no-deps \
        --force-reinstall "$src" >"$SYNAPSE_VENV/module-install.log" 2>&1 || {
        log_tail "$SYNAPSE_VENV/module-install.log"
        die "pip install contrib/synapse into $SYNAPSE_VENV failed"
    }
    rm -rf "$src/build" "$src"/*.egg-info
    (cd / && "$SYNAPSE_PYTHON" -c 'import annuaire_synapse') ||
        die "annuaire_synapse is not importable from $SYNAPSE_VENV"
}

_random_secret() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'; }

# A generous rate limit: the journey is scripted and fast, Synapse's defaults would throttle it.
_rc='{per_second: 1000, burst_count: 1000}'

synapse_configure() {
    local dir="$1" server_name="$2" port="$3" smtp_port="$4" is_url="$5"
    [[ $# -eq 5 ]] || die "usage: synapse_configure DIR SERVER_NAME PORT SMTP_PORT IS_URL"
    mkdir -p "$dir/media_store"
    dir="$(cd "$dir" && pwd)"
    local scheme=http tls=false tls_yaml=""
    if [[ -n "${SYNAPSE_TLS_CERT:-}" ]]; then
        [[ -n "${SYNAPSE_TLS_KEY:-}" ]] || die "SYNAPSE_TLS_CERT needs SYNAPSE_TLS_KEY"
        scheme=https
        tls=true
        tls_yaml="tls_certificate_path: \"$SYNAPSE_TLS_CERT\"
tls_private_key_path: \"$SYNAPSE_TLS_KEY\"
# Test only: the other homeservers' certificates come from a throwaway CA.
federation_verify_certificates: false"
    fi
    local annuaire_module=""
    if [[ -n "${SYNAPSE_ANNUAIRE_URL:-}" ]]; then
        [[ -n "${SYNAPSE_ANNUAIRE_TOKEN_FILE:-}" ]] || die "SYNAPSE_ANNUAIRE_URL needs SYNAPSE_ANNUAIRE_TOKEN_FILE"
        annuaire_module="  # annuaire's module (contrib/synapse): binds, verified names, profiles, deactivations.
  - module: annuaire_synapse.AnnuaireModule
    config:
      url: \"$SYNAPSE_ANNUAIRE_URL\"
      token_file: \"$SYNAPSE_ANNUAIRE_TOKEN_FILE\"
      timeout: 5"
    fi
    local secret="${SYNAPSE_SHARED_SECRET:-$(_random_secret)}"
    echo "$secret" >"$dir/shared_secret"
    echo "$scheme://127.0.0.1:$port" >"$dir/url"

    cat >"$dir/log.config" <<YAML
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $dir/homeserver.log
    filters: [context]
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
    request: ""
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
YAML

    cat >"$dir/homeserver.yaml" <<YAML
# Written by scripts/e2e/synapse-env.sh for the end-to-end test. NOT a production configuration:
# it trusts any TLS certificate and lets the homeserver call loopback addresses.
server_name: "$server_name"
public_baseurl: "$scheme://127.0.0.1:$port/"
pid_file: "$dir/homeserver.pid"
listeners:
  - port: $port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: $tls
    x_forwarded: false
    resources:
      - names: [client, federation]
        compress: false
$tls_yaml
database:
  name: sqlite3
  args:
    database: "$dir/homeserver.db"
log_config: "$dir/log.config"
media_store_path: "$dir/media_store"
signing_key_path: "$dir/signing.key"
report_stats: false
enable_metrics: false
macaroon_secret_key: "$(_random_secret)"
form_secret: "$(_random_secret)"
registration_shared_secret: "$secret"
bcrypt_rounds: 4

# No network beyond this machine: no key servers, no presence chatter.
trusted_key_servers: []
suppress_key_server_warning: true
presence:
  enabled: false

# Registration needs a confirmed email; the threepid-checker module asks annuaire whether the
# address belongs on this homeserver.
enable_registration: true
registrations_require_3pid: [email]
email:
  smtp_host: 127.0.0.1
  smtp_port: $smtp_port
  enable_tls: false
  require_transport_security: false
  notif_from: "%(app)s <noreply@$(echo "$server_name" | cut -d: -f1)>"
  app_name: "$server_name"
  enable_notifs: false
modules:
  - module: threepid_checker.ThreepidChecker
    config:
      url: "$is_url/_matrix/identity/api/v1/internal-info"
      only_check_at_registration: false
$annuaire_module

# The verified name stays: users cannot change their display name (annuaire's recommendation).
enable_set_displayname: false

# Test only: annuaire and the other homeservers listen on loopback with a throwaway CA.
# ip_range_whitelist opens loopback to modules' HTTP calls (threepid-checker); federation and
# identity-server calls also refuse IP-literal names in the blocklist whatever the whitelist
# says, so their blocklist is emptied (federation_ip_range_blacklist, which covers both).
use_insecure_ssl_client_just_for_testing_do_not_use: true
ip_range_whitelist: ["127.0.0.1"]
federation_ip_range_blacklist: []

user_directory:
  enabled: true
  search_all_users: true

rc_message: $_rc
rc_registration: $_rc
rc_login:
  address: $_rc
  account: $_rc
  failed_attempts: $_rc
rc_3pid_validation: $_rc
rc_third_party_invite: $_rc
rc_invites:
  per_room: $_rc
  per_user: $_rc
  per_issuer: $_rc
rc_joins:
  local: $_rc
  remote: $_rc
rc_federation:
  window_size: 1000
  sleep_limit: 1000
  sleep_delay: 1
  reject_limit: 1000
  concurrent: 100
${SYNAPSE_EXTRA_YAML:-}
YAML

    if ! "$SYNAPSE_PYTHON" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys \
        >"$dir/generate-keys.log" 2>&1; then
        log_tail "$dir/generate-keys.log"
        die "synapse --generate-keys failed for $server_name"
    fi
}

synapse_url() { cat "$1/url"; }

tls_make_certs() {
    local dir="$1"
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=annuaire test CA" -keyout ca.key -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout leaf.key -out leaf.csr
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile leaf.ext -out leaf.crt
    ) >"$dir/openssl.log" 2>&1 || {
        log_tail "$dir/openssl.log"
        die "openssl could not make the test certificates"
    }
}

# True when GET /health answers 200 (certificates are not checked: throwaway CA).
_synapse_healthy() {
    "$SYNAPSE_PYTHON" - "$1/health" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with urllib.request.urlopen(sys.argv[1], timeout=2, context=ctx) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

synapse_start() {
    local dir="$1"
    dir="$(cd "$dir" && pwd)"
    [[ -f "$dir/homeserver.yaml" ]] || die "no homeserver.yaml in $dir: run synapse_configure first"
    local url
    url="$(synapse_url "$dir")"
    rm -f "$dir/group.pid"
    # Its own process group (setsid), whose id is written first, so synapse_stop kills exactly it.
    local env_args=()
    if [[ -n "${SYNAPSE_CA_FILE:-}" ]]; then env_args+=("SSL_CERT_FILE=$SYNAPSE_CA_FILE"); fi
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$dir/group.pid" \
        env "${env_args[@]}" "$SYNAPSE_PYTHON" -m synapse.app.homeserver -c "$dir/homeserver.yaml" \
        </dev/null >"$dir/stdout.log" 2>&1 &
    wait_until 5 "$dir/group.pid" test -s "$dir/group.pid" || die "synapse did not start"
    local pid deadline=$((SECONDS + 60))
    pid="$(cat "$dir/group.pid")"
    while ! _synapse_healthy "$url" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            log_tail "$dir/stdout.log" 20
            log_tail "$dir/homeserver.log" 30
            synapse_stop "$dir"
            die "synapse in $dir did not answer GET $url/health"
        fi
        sleep 0.2
    done
    info "synapse $(grep -m1 '^server_name' "$dir/homeserver.yaml" | cut -d'"' -f2) on $url (pid $pid)"
}

synapse_stop() {
    local dir="$1"
    if [[ -s "$dir/group.pid" ]]; then
        kill_group "$(cat "$dir/group.pid")"
        rm -f "$dir/group.pid"
    fi
}

synapse_register() {
    local dir="$1"
    shift
    "$SYNAPSE_PYTHON" "$ANNUAIRE_ROOT/scripts/e2e/register_user.py" \
        --url "$(synapse_url "$dir")" --shared-secret "$(cat "$dir/shared_secret")" "$@"
}

# ---- command-line use ----

# Milliseconds since the epoch (bash 5's EPOCHREALTIME), for timings finer than a second.
_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# _hs_call METHOD URL TOKEN [JSON]: one client-API call, prints the JSON answer, fails on non-2xx.
_hs_call() {
    "$SYNAPSE_PYTHON" - "$@" <<'PY'
import json, ssl, sys, urllib.error, urllib.request
method, url, token = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
req = urllib.request.Request(url, data=body, method=method,
                             headers={"Authorization": "Bearer " + token,
                                      "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        print(r.read().decode())
except urllib.error.HTTPError as e:
    sys.exit(f"{method} {url}: HTTP {e.code}: {e.read().decode(errors='replace')}")
PY
}

_json_field() { "$SYNAPSE_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

_synapse_selftest() {
    local t0 t1 t2 t3 t4 dir
    t0="$(_ms)"
    synapse_install
    t1="$(_ms)"
    dir="$(mktemp -d /tmp/annuaire-synapse.XXXXXX)"
    trap 'synapse_stop "'"$dir"'/a"; synapse_stop "'"$dir"'/b"; rm -rf "'"$dir"'"' EXIT
    tls_make_certs "$dir/tls"
    local pa pb
    pa="$(free_port)"
    pb="$(free_port)"
    # Nothing listens on the SMTP port or the identity server URL: this proves the homeservers
    # start, register users and federate; the journey provides mail and annuaire.
    SYNAPSE_TLS_CERT="$dir/tls/leaf.crt" SYNAPSE_TLS_KEY="$dir/tls/leaf.key" \
        synapse_configure "$dir/a" "127.0.0.1:$pa" "$pa" 9 "http://127.0.0.1:9"
    SYNAPSE_TLS_CERT="$dir/tls/leaf.crt" SYNAPSE_TLS_KEY="$dir/tls/leaf.key" \
        synapse_configure "$dir/b" "127.0.0.1:$pb" "$pb" 9 "http://127.0.0.1:9"
    t2="$(_ms)"
    synapse_start "$dir/a"
    t3="$(_ms)"
    synapse_start "$dir/b"
    local t3b
    t3b="$(_ms)"
    local a b token_a token_b who room
    a="$(synapse_url "$dir/a")"
    b="$(synapse_url "$dir/b")"
    token_a="$(synapse_register "$dir/a" alice alice-password --admin | _json_field access_token)"
    token_b="$(synapse_register "$dir/b" bob bob-password | _json_field access_token)"
    t4="$(_ms)"
    who="$(_hs_call GET "$a/_matrix/client/v3/account/whoami" "$token_a" | _json_field user_id)"
    [[ "$who" == "@alice:127.0.0.1:$pa" ]] || die "whoami on A says $who"
    echo "registered and checked with whoami: $who, @bob:127.0.0.1:$pb"
    room="$(_hs_call POST "$b/_matrix/client/v3/createRoom" "$token_b" '{}' | _json_field room_id)"
    _hs_call POST "$b/_matrix/client/v3/rooms/$room/invite" "$token_b" "{\"user_id\":\"$who\"}" >/dev/null
    _hs_call POST "$a/_matrix/client/v3/join/$room" "$token_a" '{}' >/dev/null
    local members
    members="$(_hs_call GET "$b/_matrix/client/v3/rooms/$room/joined_members" "$token_b")"
    grep -q "\"@alice:127.0.0.1:$pa\"" <<<"$members" || die "alice is not in B's room: $members"
    echo "federation: @bob on B invited @alice on A into $room; she joined"
    local t5
    t5="$(_ms)"
    synapse_stop "$dir/a"
    synapse_stop "$dir/b"
    echo "timings: install $((t1 - t0)) ms, configure + keys (2 homeservers) $((t2 - t1)) ms," \
        "start to /health 200 $((t3 - t2)) ms (A) and $((t3b - t3)) ms (B), register 2 users $((t4 - t3b)) ms," \
        "federated invite + join $((t5 - t4)) ms"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
    install) synapse_install && synapse_install_module ;;
    selftest) _synapse_selftest ;;
    *)
        sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
        exit 2
        ;;
    esac
fi
