# shellcheck shell=bash
# The operator's documentation, for the `docs` stage of scripts/test: the Prometheus rules pass
# `promtool check rules` and their unit tests (`promtool test rules`), and docs/operations.md
# names only configuration keys and metrics that exist, with TOML examples that
# `annuaire check-config` accepts. Installs promtool (Debian package prometheus) when missing.
# Sourced, never executed: docs_stage DIR.

if [[ -n "${_ANNUAIRE_DOCS_SH:-}" ]]; then return 0; fi
_ANNUAIRE_DOCS_SH=1
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/install.sh"

# For scripts/test's summary line.
# shellcheck disable=SC2034
docs_note=""

# docs_stage DIR: the whole stage, working in DIR (a fresh folder).
docs_stage() {
    local dir="$1"
    # Debian ships promtool in the prometheus package (its server is not started: apt_install
    # forbids service starts).
    command -v promtool >/dev/null 2>&1 || apt_install prometheus
    promtool check rules "$ANNUAIRE_ROOT/docs/prometheus/annuaire-rules.yml"
    promtool test rules "$ANNUAIRE_ROOT/docs/prometheus/annuaire-rules.test.yml"
    python3 "$ANNUAIRE_ROOT/scripts/lib/check_docs.py" "$ANNUAIRE_ROOT" "$dir/toml"
    cargo build --quiet --bin annuaire
    local bin f n=0
    bin="$(realpath "${CARGO_TARGET_DIR:-target}/debug/annuaire")"
    mkdir -p "$dir/cwd"
    for f in "$dir"/toml/*.toml; do
        [[ -e "$f" ]] || continue
        # From an empty folder, so that relative defaults (allowlists/) read nothing of the tree.
        (cd "$dir/cwd" && "$bin" --config "$f" check-config >"$dir/check.log" 2>&1) || {
            cat "$dir/check.log" >&2
            printf -- '---- the TOML block:\n%s\n' "$(cat "$f")" >&2
            die "annuaire check-config refuses a TOML block of docs/operations.md"
        }
        n=$((n + 1))
    done
    echo "   check-config accepts the $n TOML blocks of docs/operations.md"
    # shellcheck disable=SC2034 # read by scripts/test
    docs_note="rules checked and tested; $n TOML blocks valid"
}
