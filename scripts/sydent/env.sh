#!/usr/bin/env bash
# A real Sydent (matrix-sydent 2.6.1 from PyPI) for the tests of `annuaire import sydent`.
#
# As a library (source it):
#   sydent_install                  .venv/sydent with scripts/sydent/requirements.txt; quick when
#                                   already there
#   sydent_configure DIR SERVER_NAME PORT SMTP_PORT
#                                   write DIR/sydent.conf (+ mail templates, terms) for a Sydent on
#                                   127.0.0.1:PORT that mails through 127.0.0.1:SMTP_PORT and may
#                                   call homeservers on loopback without checking certificates
#   sydent_start DIR                start it in the background, wait until it answers
#   sydent_stop DIR                 stop it (its process group)
#
# As a command:
#   scripts/sydent/env.sh install   install (or check) .venv/sydent
#   scripts/sydent/env.sh record OUT
#                                   start an SMTP sink, a Synapse homeserver (TLS, for OpenID) and
#                                   Sydent; walk Sydent's v2 API as a deployment does (account
#                                   registration through OpenID, terms, email validation, bind,
#                                   store-invite) and record its answers; stop them and leave in
#                                   OUT: sydent.db, sydent.conf, expected.json (what
#                                   tests/it/sydent_import.rs compares annuaire's answers with)
#   scripts/sydent/env.sh synthetic OUT.db N [--dinsic]
#                                   a Sydent database with N associations (Sydent's own schema
#                                   code, signatures by a key written to OUT.db.conf), for the
#                                   import benchmark

if [[ -n "${_ANNUAIRE_SYDENT_ENV_SH:-}" ]]; then return 0; fi
_ANNUAIRE_SYDENT_ENV_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
# shellcheck source=scripts/lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/install.sh"
# shellcheck source=scripts/e2e/synapse-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/synapse-env.sh"

SYDENT_VENV="$ANNUAIRE_ROOT/.venv/sydent"
SYDENT_PYTHON="$SYDENT_VENV/bin/python"
SYDENT_REQUIREMENTS="$ANNUAIRE_ROOT/scripts/sydent/requirements.txt"

sydent_install() {
    local want
    want="$(sha256sum "$SYDENT_REQUIREMENTS" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version.split()[0])')"
    if [[ -x "$SYDENT_PYTHON" && "$(cat "$SYDENT_VENV/.annuaire-stamp" 2>/dev/null)" == "$want" ]] &&
        "$SYDENT_PYTHON" -c 'import sydent.sydent' 2>/dev/null; then
        return 0
    fi
    info "installing matrix-sydent (scripts/sydent/requirements.txt) into $SYDENT_VENV"
    rm -rf "$SYDENT_VENV"
    python3 -m venv "$SYDENT_VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
    "$SYDENT_PYTHON" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$SYDENT_REQUIREMENTS" || die "pip install -r $SYDENT_REQUIREMENTS failed"
    "$SYDENT_PYTHON" -c 'import sydent.sydent' || die "sydent does not import after installation"
    echo "$want" >"$SYDENT_VENV/.annuaire-stamp"
}

sydent_configure() {
    local dir="$1" server_name="$2" port="$3" smtp_port="$4"
    [[ $# -eq 4 ]] || die "usage: sydent_configure DIR SERVER_NAME PORT SMTP_PORT"
    mkdir -p "$dir/templates/matrix-org"
    dir="$(cd "$dir" && pwd)"
    echo "http://127.0.0.1:$port" >"$dir/url"
    # Mail templates of our own (the wheel ships none): plain text, with the values the harness
    # reads back between markers.
    cat >"$dir/templates/matrix-org/verification_template.eml.j2" <<'EML'
Date: {{ date|safe }}
From: {{ from|safe }}
To: {{ to|safe }}
Message-ID: {{ messageid|safe }}
Subject: Confirm your email address
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8

TOKEN={{ token|safe }}
EML
    cat >"$dir/templates/matrix-org/invite_template.eml.j2" <<'EML'
Date: {{ date|safe }}
From: {{ from|safe }}
To: {{ to|safe }}
Message-ID: {{ messageid|safe }}
Subject: You are invited
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8

INVITE_TOKEN={{ token|safe }}
EPHEMERAL_PRIVATE_KEY={{ ephemeral_private_key|safe }}
EML
    printf '<html><body>{{ message }}</body></html>\n' \
        >"$dir/templates/matrix-org/verify_response_template.html"
    cat >"$dir/terms.yaml" <<'YAML'
master_version: "sydent-import-1"
docs:
  privacy_policy:
    version: "1.0"
    langs:
      en:
        name: "Privacy Policy"
        url: "https://sydent-import.example/privacy-1.0-en.html"
      fr:
        name: "Politique de confidentialité"
        url: "https://sydent-import.example/privacy-1.0-fr.html"
YAML
    # An empty ed25519.signingkey makes Sydent create its key and write it back into the file,
    # as it does on a real first start.
    cat >"$dir/sydent.conf" <<CONF
[general]
server.name = $server_name
log.path = $dir/sydent.log
log.level = INFO
pidfile.path = $dir/sydent.pid
templates.path = $dir/templates
terms.path = $dir/terms.yaml
# Test only: the homeserver is on loopback (Sydent refuses private ranges by default).
ip.whitelist = 127.0.0.1

[db]
db.file = $dir/sydent.db

[http]
clientapi.http.bind_address = 127.0.0.1
clientapi.http.port = $port
replication.https.port = $(free_port)
client_http_base = http://127.0.0.1:$port
# Test only: the homeserver's certificate comes from a throwaway CA.
federation.verifycerts = False

[email]
email.from = Sydent <noreply@sydent-import.example>
email.smtphost = 127.0.0.1
email.smtpport = $smtp_port
email.hostname = sydent-import.example
email.tlsmode = 0

[crypto]
ed25519.signingkey =
CONF
}

_sydent_answers() {
    "$SYDENT_PYTHON" -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/_matrix/identity/v2", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)' "$1"
}

sydent_start() {
    local dir="$1"
    dir="$(cd "$dir" && pwd)"
    [[ -f "$dir/sydent.conf" ]] || die "no sydent.conf in $dir: run sydent_configure first"
    local url
    url="$(cat "$dir/url")"
    rm -f "$dir/group.pid"
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    (cd "$dir" && SYDENT_CONF="$dir/sydent.conf" setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh \
        "$dir/group.pid" "$SYDENT_PYTHON" -m sydent.sydent </dev/null >"$dir/stdout.log" 2>&1) &
    wait_until 5 "$dir/group.pid" test -s "$dir/group.pid" || die "sydent did not start"
    local pid deadline=$((SECONDS + 30))
    pid="$(cat "$dir/group.pid")"
    while ! _sydent_answers "$url" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            log_tail "$dir/stdout.log" 30
            log_tail "$dir/sydent.log" 30
            sydent_stop "$dir"
            die "sydent in $dir did not answer GET $url/_matrix/identity/v2"
        fi
        sleep 0.2
    done
    info "sydent $(grep -m1 '^server.name' "$dir/sydent.conf" | cut -d= -f2 | tr -d ' ') on $url (pid $pid)"
}

sydent_stop() {
    local dir="$1"
    if [[ -s "$dir/group.pid" ]]; then
        kill_group "$(cat "$dir/group.pid")"
        rm -f "$dir/group.pid"
    fi
}

# ---- command-line use ----

# _smtp_sink_start DIR: the project's aiosmtpd sink on a free port, writing DIR/mail/<n>.eml;
# prints nothing, writes DIR/port and DIR/group.pid.
_smtp_sink_start() {
    local dir="$1"
    mkdir -p "$dir/mail"
    rm -f "$dir/group.pid" "$dir/stdout.log"
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$dir/group.pid" \
        "$TEST_VENV/bin/python" "$ANNUAIRE_ROOT/tests/support/smtp_sink.py" --port 0 --dir "$dir/mail" \
        </dev/null >"$dir/stdout.log" 2>"$dir/stderr.log" &
    wait_until 10 "the SMTP sink" grep -q '^READY ' "$dir/stdout.log" || {
        log_tail "$dir/stderr.log"
        die "the SMTP sink did not start"
    }
    awk '/^READY / {print $2}' "$dir/stdout.log" >"$dir/port"
}

_sydent_record() {
    local out="${1:-}"
    [[ -n "$out" ]] || die "usage: scripts/sydent/env.sh record OUT"
    sydent_install
    synapse_install
    install_test_venv
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    local work
    work="$(mktemp -d /tmp/annuaire-sydent.XXXXXX)"
    # shellcheck disable=SC2064 # the folder is fixed now
    trap "sydent_stop '$work/sydent'; synapse_stop '$work/hs'; [[ -s '$work/smtp/group.pid' ]] && kill_group \"\$(cat '$work/smtp/group.pid')\"; rm -rf '$work'" EXIT
    _smtp_sink_start "$work/smtp"
    local smtp_port hs_port sydent_port
    smtp_port="$(cat "$work/smtp/port")"
    tls_make_certs "$work/tls"
    hs_port="$(free_port)"
    # Sydent checks OpenID tokens over federation (always https): the homeserver serves TLS.
    SYNAPSE_TLS_CERT="$work/tls/leaf.crt" SYNAPSE_TLS_KEY="$work/tls/leaf.key" \
        synapse_configure "$work/hs" "127.0.0.1:$hs_port" "$hs_port" "$smtp_port" "http://127.0.0.1:9"
    synapse_start "$work/hs"
    sydent_port="$(free_port)"
    sydent_configure "$work/sydent" "sydent.test.example" "$sydent_port" "$smtp_port"
    sydent_start "$work/sydent"
    local user_json
    user_json="$(synapse_register "$work/hs" alice alice-password)"
    "$SYDENT_PYTHON" "$ANNUAIRE_ROOT/scripts/sydent/record.py" \
        --sydent "$(cat "$work/sydent/url")" --homeserver "$(synapse_url "$work/hs")" \
        --user "$user_json" --mail-dir "$work/smtp/mail" --conf "$work/sydent/sydent.conf" \
        --terms "$work/sydent/terms.yaml" --out "$out/expected.json" || {
        log_tail "$work/sydent/sydent.log" 40
        die "the Sydent walk-through failed"
    }
    sydent_stop "$work/sydent"
    cp "$work/sydent/sydent.db" "$work/sydent/sydent.conf" "$out/"
    info "recorded Sydent's database and answers in $out"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
    install) sydent_install ;;
    record)
        shift
        _sydent_record "$@"
        ;;
    synthetic)
        shift
        sydent_install
        "$SYDENT_PYTHON" "$ANNUAIRE_ROOT/scripts/sydent/synthetic.py" "$@"
        ;;
    *)
        sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
        exit 2
        ;;
    esac
fi
