#!/usr/bin/env bash
# Console benchmark (issue 12): the server time of every console page, and of the agents'
# pages, with 10,000 rules and 1,000,000 directory entries, on SQLite.
#
# Usage: bench/console.sh [--entries N] [--rules N] [--requests N] [--binary PATH]
#
# It writes allowlist files with N rules (domains, addresses, a few denies and patterns),
# imports the directory entries (`annuaire directory import-synthetic`), starts `annuaire serve`
# (release build) with JSON logs, logs in to the console like a browser (form token, session
# cookie), requests each page N times in a row with curl, and reads the server's own
# `latency_ms` of each request from its log (the time from the request's arrival to the
# response, so neither curl nor the loopback count). Results: bench/results/console.md.
# Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh

entries=1000000
rules=10000
requests=30
bin=""
while (($# > 0)); do
    case "$1" in
    --entries) entries="$2"; shift ;;
    --rules) rules="$2"; shift ;;
    --requests) requests="$2"; shift ;;
    --binary) bin="$2"; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
command -v curl >/dev/null || die "curl is not installed"

if [[ -z "$bin" ]]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
    info "building the release binary"
    cargo build --release --quiet --bin annuaire
    bin="$CARGO_TARGET_DIR/release/annuaire"
fi

# BENCH_WORK: a work folder of an earlier run, whose rules and entries are reused.
work="${BENCH_WORK:-$(mktemp -d /tmp/annuaire-console-bench.XXXXXX)}"
reuse=""
[[ -f "$work/var/annuaire.db" ]] && reuse=1
serve_pid=""
cleanup() {
    if [[ -n "$serve_pid" ]]; then kill "$serve_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
info "work folder: $work"

if [[ -z "$reuse" ]]; then
info "writing $rules rules"
mkdir -p "$work/allowlists"
python3 - "$work/allowlists" "$rules" <<'PY'
import sys
folder, total = sys.argv[1], int(sys.argv[2])
per_file = 1000
n = 0
f = 0
while n < total:
    f += 1
    lines = [f'[organisation]\nlabel = "Organisation {f}"\nhomeserver = "agent.org{f}.example"\n']
    for i in range(min(per_file, total - n)):
        k = n + i
        if k % 100 == 99:
            lines.append(f'[[deny]]\nname = "webmail.d{k}.gouv.example"\n')
        elif k % 50 == 49:
            lines.append(f'[[address]]\nemail = "agent{k}@partner{k}.example"\n')
        elif k % 1000 == 998:
            lines.append(f"[[pattern]]\nregex = '^[a-z]+\\.[a-z]+@region{k}-[0-9]+\\.example$'\n")
        else:
            lines.append(f'[[domain]]\nname = "d{k}.gouv.example"\nsubdomains = true\n')
    n += per_file
    open(f"{folder}/org{f:03}.toml", "w").write("\n".join(lines))
PY
fi

port="$(free_port)"
cat >"$work/annuaire.toml" <<TOML
[server]
name = "bench.example"
data_dir = "$work/var"
[http]
bind = "127.0.0.1:$port"
[log]
format = "json"
level = "info"
[policy]
allowlists_dir = "$work/allowlists"
TOML

if [[ -z "$reuse" ]]; then
    info "importing $entries synthetic directory entries"
    started="$(now_s)"
    "$bin" --config "$work/annuaire.toml" directory import-synthetic "$entries" --seed 1 >"$work/import.out" 2>"$work/import.err"
    info "imported in $(($(now_s) - started)) s"
    printf 'bench password 1\n' >"$work/pw"
    "$bin" --config "$work/annuaire.toml" admin add bench --role editor --password-file "$work/pw" >/dev/null 2>&1
fi

"$bin" --config "$work/annuaire.toml" serve 2>"$work/serve.log" &
serve_pid=$!
wait_until 120 "annuaire serve on $port" curl -sf "http://127.0.0.1:$port/health/ready"
base="http://127.0.0.1:$port"

info "logging in to the console"
jar="$work/cookies"
page="$(curl -sf -c "$jar" "$base/_annuaire/console/login")"
csrf="$(sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' <<<"$page" | sed -n 1p)"
curl -sf -b "$jar" -c "$jar" -o /dev/null \
    --data-urlencode "csrf=$csrf" --data-urlencode "username=bench" \
    --data-urlencode "password=bench password 1" "$base/_annuaire/console/login"
grep -q annuaire_console "$jar" || die "the console login failed"

rule="$(curl -sf -b "$jar" "$base/_annuaire/console/rules" | sed -n 's/.*href="\/_annuaire\/console\/rules\/\(r[0-9a-f]*\)".*/\1/p' | sed -n 1p)"
entry="$(curl -sf -b "$jar" "$base/_annuaire/console/directory" | sed -n 's/.*href="\(\/_annuaire\/console\/directory\/entry?user_id=[^"]*\)".*/\1/p' | sed -n 1p)"
[[ -n "$rule" && -n "$entry" ]] || die "no rule or no directory entry found on the pages"

# name|path (GET, as the logged-in editor)
pages=(
    "dashboard|/_annuaire/console/"
    "rules (first page)|/_annuaire/console/rules"
    "rules filtered by domain|/_annuaire/console/rules?domain=x.d4242.gouv.example"
    "rules filtered by source and kind|/_annuaire/console/rules?source=org007.toml&kind=domain"
    "rules, a later page|/_annuaire/console/rules?from=r8"
    "one rule|/_annuaire/console/rules/$rule"
    "new rule form|/_annuaire/console/rules/new"
    "import form|/_annuaire/console/rules/import"
    "export form|/_annuaire/console/rules/export"
    "export (one file's rules)|/_annuaire/console/rules/export.toml?source=org003.toml"
    "explain|/_annuaire/console/explain?address=jean.dupont%40x.d4242.gouv.example"
    "audit log|/_annuaire/console/audit"
    "audit log filtered|/_annuaire/console/audit?action=rule.*"
    "directory (first page)|/_annuaire/console/directory"
    "directory search|/_annuaire/console/directory?q=martin"
    "directory search, 2 words|/_annuaire/console/directory?q=jean+dup"
    "directory entry|$entry"
    "erasure form|/_annuaire/console/erase"
    "accounts|/_annuaire/console/accounts"
    "domain requests|/_annuaire/console/requests"
    "agents' home page|/"
    "request form|/request"
)
# Marks each page's requests in the server log with its order: the log names route patterns.
: >"$work/order"
for item in "${pages[@]}"; do
    name="${item%%|*}"
    path="${item#*|}"
    before="$(wc -l <"$work/serve.log")"
    for _ in $(seq 1 "$requests"); do
        code="$(curl -s -o /dev/null -w '%{http_code}' -b "$jar" "$base$path")"
        [[ "$code" == 200 ]] || die "$name ($path) answered $code"
    done
    printf '%s\t%s\t%s\n' "$name" "$before" "$(wc -l <"$work/serve.log")" >>"$work/order"
done
# The agents' check (POST /), with the form token.
form_jar="$work/form-cookies"
home="$(curl -sf -c "$form_jar" "$base/")"
form_csrf="$(sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' <<<"$home" | sed -n 1p)"
before="$(wc -l <"$work/serve.log")"
for _ in $(seq 1 "$requests"); do
    curl -s -o /dev/null -b "$form_jar" --data-urlencode "csrf=$form_csrf" \
        --data-urlencode "address=jean.dupont@x.d4242.gouv.example" "$base/"
done
printf '%s\t%s\t%s\n' "agents' check (POST /)" "$before" "$(wc -l <"$work/serve.log")" >>"$work/order"
sleep 1

results="${BENCH_RESULTS:-bench/results/console.md}"
build="release build"
[[ "$bin" == */debug/* ]] && build="DEBUG build (not representative)"
python3 - "$work/serve.log" "$work/order" "$rules" "$entries" "$requests" "$build" >"$results" <<'PY'
import json, sys, statistics
log, order, rules, entries, n, build = sys.argv[1:7]
lines = open(log).read().splitlines()
print("# Console pages: server time\n")
print(f"{int(rules):,} rules, {int(entries):,} directory entries, SQLite, {build}, "
      f"{n} requests per page one after the other (curl, a logged-in editor). Server time is the "
      "`latency_ms` annuaire logs for each request (arrival to response). Produced by "
      "`bench/console.sh`.\n")
print("| page | route | p50 ms | p95 ms | max ms |")
print("|---|---|---:|---:|---:|")
worst = 0.0
for row in open(order).read().splitlines():
    name, a, b = row.split("\t")
    times, route = [], ""
    for line in lines[int(a):int(b)]:
        try:
            v = json.loads(line)
        except ValueError:
            continue
        f = v.get("fields", v)
        if f.get("message") == "request" and "latency_ms" in f and not f.get("route", "").endswith("{file}"):
            times.append(float(f["latency_ms"]))
            route = f.get("route", route)
    if not times:
        print(f"| {name} | | no request logged | | |")
        continue
    times.sort()
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    worst = max(worst, p95)
    print(f"| {name} | `{route}` | {p50:.1f} | {p95:.1f} | {times[-1]:.1f} |")
print(f"\nSlowest page at the 95th percentile: {worst:.1f} ms (the issue's bound: 50 ms).")
PY
cat "$results"
