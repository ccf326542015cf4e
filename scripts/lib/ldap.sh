# shellcheck shell=bash
# A throwaway OpenLDAP server for the tests: configured from tests/fixtures/ldap/config.ldif
# (cn=config), loaded with tests/fixtures/ldap/people.ldif, listening on two random loopback
# ports: ldap:// (which also offers StartTLS) and ldaps://, with a certificate from a throwaway
# CA made for the run (DIR/ldap/tls/ca.crt). Sourced, never executed.
#
#   ldap_start DIR   configure and start slapd in DIR/ldap; write DIR/ldap/env (TEST_LDAP_* values)
#   ldap_stop DIR    stop it (its process group) and remove DIR/ldap

if [[ -n "${_ANNUAIRE_LDAP_SH:-}" ]]; then return 0; fi
_ANNUAIRE_LDAP_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LDAP_FIXTURES="$ANNUAIRE_ROOT/tests/fixtures/ldap"
LDAP_BASE_DN="dc=agents,dc=example"
LDAP_ROOT_DN="cn=admin,dc=agents,dc=example"
# The service account and its password are part of the fixture (people.ldif stores the hash).
LDAP_SERVICE_DN="cn=annuaire,ou=services,dc=agents,dc=example"
LDAP_SERVICE_PASSWORD="annuaire-service-secret"

# True when the service account can search the directory at URL.
_ldap_answers() {
    ldapsearch -x -LLL -o nettimeout=2 -H "$1" -D "$LDAP_SERVICE_DN" -w "$LDAP_SERVICE_PASSWORD" \
        -b "$LDAP_BASE_DN" -s base '(objectClass=*)' dn
}

# Waits until slapd (pid) answers at url; gives up at once if it died (bad config, port taken).
_ldap_wait() {
    local url="$1" pid="$2" deadline=$((SECONDS + 15))
    while ! _ldap_answers "$url" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || return 1
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# A throwaway CA (DIR/ca.crt) and a leaf for 127.0.0.1 and localhost signed by it (DIR/leaf.crt,
# DIR/leaf.key): TLS clients that verify (rustls) refuse a self-signed certificate used as its
# own CA.
_ldap_make_certs() {
    local dir="$1"
    mkdir -p "$dir"
    (
        cd "$dir"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj "/CN=annuaire test LDAP CA" -keyout ca.key -out ca.crt \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout leaf.key -out leaf.csr
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile leaf.ext -out leaf.crt
        chmod 600 ca.key leaf.key
    ) >"$dir/openssl.log" 2>&1 || {
        log_tail "$dir/openssl.log"
        die "openssl could not make the test LDAP certificates"
    }
}

ldap_start() {
    local dir="$1"
    local ldir="$dir/ldap"
    local conf="$ldir/slapd.d" data="$ldir/data" run="$ldir/run" log="$ldir/slapd.log"
    [[ -x /usr/sbin/slapd ]] || die "slapd is not installed (apt-get install slapd ldap-utils)"
    mkdir -p "$conf" "$data" "$run"
    chmod 700 "$ldir"
    command -v openssl >/dev/null 2>&1 || die "openssl is not installed (apt-get install openssl)"
    _ldap_make_certs "$ldir/tls"

    # The rootdn password is random per run: only this script and tests that change data use it.
    local root_pw root_hash
    root_pw="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    root_hash="$(/usr/sbin/slappasswd -s "$root_pw")" || die "slappasswd failed"
    sed -e "s|@RUN_DIR@|$run|g" -e "s|@DATA_DIR@|$data|g" -e "s|@ROOT_DN@|$LDAP_ROOT_DN|g" \
        -e "s|@ROOT_PW_HASH@|$root_hash|g" -e "s|@SERVICE_DN@|$LDAP_SERVICE_DN|g" \
        -e "s|@TLS_DIR@|$ldir/tls|g" \
        "$LDAP_FIXTURES/config.ldif" >"$ldir/config.ldif"
    if ! /usr/sbin/slapadd -n0 -F "$conf" -l "$ldir/config.ldif" >"$ldir/slapadd.log" 2>&1; then
        log_tail "$ldir/slapadd.log"
        die "slapadd of the cn=config LDIF failed"
    fi
    if ! /usr/sbin/slapadd -q -n1 -F "$conf" -l "$LDAP_FIXTURES/people.ldif" >>"$ldir/slapadd.log" 2>&1; then
        log_tail "$ldir/slapadd.log"
        die "slapadd of tests/fixtures/ldap/people.ldif failed"
    fi

    local port="" url="" tls_port="" tls_url="" pid="" attempt started=""
    for attempt in 1 2 3; do
        port="$(free_port)"
        url="ldap://127.0.0.1:$port"
        tls_port="$(free_port)"
        while [[ "$tls_port" == "$port" ]]; do tls_port="$(free_port)"; done
        tls_url="ldaps://127.0.0.1:$tls_port"
        # -d none: stay in the foreground (so we own the process) and log only critical messages
        # (-d 0 would hide even "bind failed: Address already in use"). setsid gives it its own
        # process group, which ldap_stop kills; the group id is the pid written here.
        rm -f "$run/group.pid"
        # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
        setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$run/group.pid" \
            /usr/sbin/slapd -d none -h "$url/ $tls_url/" -F "$conf" </dev/null >"$log" 2>&1 &
        if wait_until 5 "$run/group.pid" test -s "$run/group.pid"; then
            pid="$(cat "$run/group.pid")"
            if _ldap_wait "$url" "$pid" &&
                LDAPTLS_CACERT="$ldir/tls/ca.crt" _ldap_wait "$tls_url" "$pid"; then
                started=1
                break
            fi
        fi
        kill_group "$pid"
        if ! grep -qi "address already in use" "$log" 2>/dev/null; then
            break
        fi
        warn "slapd: port $port taken, retrying (attempt $attempt)"
    done
    if [[ -z "$started" ]]; then
        log_tail "$log"
        die "slapd did not start or does not answer on $url and $tls_url"
    fi
    # StartTLS on the plain port, checked once so that a broken TLS set-up fails here.
    if ! LDAPTLS_CACERT="$ldir/tls/ca.crt" ldapsearch -ZZ -x -LLL -o nettimeout=2 -H "$url" \
        -D "$LDAP_SERVICE_DN" -w "$LDAP_SERVICE_PASSWORD" -b "$LDAP_BASE_DN" -s base \
        '(objectClass=*)' dn >/dev/null 2>"$ldir/starttls.log"; then
        log_tail "$ldir/starttls.log"
        kill_group "$pid"
        die "slapd does not accept StartTLS on $url"
    fi
    cat >"$ldir/env" <<ENV
TEST_LDAP_URL=$url
TEST_LDAPS_URL=$tls_url
TEST_LDAP_CA_FILE=$ldir/tls/ca.crt
TEST_LDAP_BASE_DN=$LDAP_BASE_DN
TEST_LDAP_BIND_DN=$LDAP_SERVICE_DN
TEST_LDAP_BIND_PASSWORD=$LDAP_SERVICE_PASSWORD
TEST_LDAP_ROOT_DN=$LDAP_ROOT_DN
TEST_LDAP_ROOT_PASSWORD=$root_pw
ENV
    info "OpenLDAP on $url (StartTLS) and $tls_url (base $LDAP_BASE_DN, pid $pid)"
}

ldap_stop() {
    local dir="$1"
    local ldir="$dir/ldap"
    [[ -d "$ldir" ]] || return 0
    if [[ -s "$ldir/run/group.pid" ]]; then
        kill_group "$(cat "$ldir/run/group.pid")"
    fi
    rm -rf "$ldir"
}
