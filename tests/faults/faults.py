#!/usr/bin/env python3
"""Faults under load (issue 15): real annuaire processes on a real PostgreSQL, a real SMTP
server (tests/support/smtp_sink.py) and nginx, all on loopback, each scenario bounded in time
and traffic. Started by tests/faults/run, which provides the environment below.

Scenarios (--only NAME to run one):
  kill9      kill -9 of the serving instance during a load of binds and requestTokens: every
             acknowledged bind is there after the restart, every acknowledged requestToken's
             mail is sent, once; the one mail the killed instance may have been handing to the
             SMTP server when it died can be sent twice (the same message: see mail_figures).
  smtp       the SMTP server down for FAULTS_SMTP_OUTAGE seconds (default 60) during a
             requestToken load: 0 mails lost, 0 duplicated.
  postgres   PostgreSQL stopped and started again during load: /health/ready goes false then
             true, requests meanwhile get 503 with a Matrix error (never a 5xx of another kind,
             never a hang past the connection timeout), and the instance recovers by itself.
  nginx      two instances on one database behind nginx, one killed mid-load: no acknowledged
             write lost (the same rule about a mail in flight), rules changed through the
             survivor reach the restarted one.

Each scenario prints its figures (requests, acknowledged, found after, duplicates) and fails
with a message when an expectation does not hold.

Environment: FAULTS_ANNUAIRE (the binary; not ANNUAIRE_..., which annuaire reads as its
configuration), FAULTS_WORK (a folder of our own), FAULTS_PG_URL (a superuser URL on a server of
our own), FAULTS_PG_STOP and FAULTS_PG_START (commands that stop and start that server),
FAULTS_SINK (smtp_sink.py) and FAULTS_SINK_PYTHON (a Python with aiosmtpd), NGINX.
"""

import argparse
import concurrent.futures
import email
import email.policy
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVER_NAME = "is.faults.test"
HOMESERVER = "hs.faults.test"
DOMAIN = "faults.example"
# database.connection_timeout of every instance: no request may wait much longer.
CONNECTION_TIMEOUT_S = 2
# mail.smtp.timeout: an outbox lease is twice this plus 30 s (src/mail/outbox.rs), which is how
# long a mail claimed by a killed instance waits before another worker takes it.
SMTP_TIMEOUT_S = 1
LEASE_S = 2 * SMTP_TIMEOUT_S + 30
TOKEN_LINE = re.compile(rb"(?m)^([A-Za-z0-9]{32})\r?$")


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"faults.py: {name} is not set (run tests/faults/run)")
    return value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text):
    print(text, flush=True)


class Failure(Exception):
    """An expectation of the issue that did not hold."""


def expect(condition, message):
    if not condition:
        raise Failure(message)


# ---- HTTP ----


class Reply:
    def __init__(self, status, body, elapsed, error=None):
        self.status = status  # 0: no HTTP answer (connection refused or reset)
        self.body = body
        self.elapsed = elapsed
        self.error = error

    @property
    def errcode(self):
        return self.body.get("errcode") if isinstance(self.body, dict) else None


def call(method, url, body=None, token=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    except (OSError, urllib.error.URLError) as e:
        return Reply(0, None, time.monotonic() - started, error=str(e))
    elapsed = time.monotonic() - started
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Reply(status, parsed, elapsed)


# ---- the parts: a homeserver double, the SMTP sink, PostgreSQL, annuaire, nginx ----


class Homeserver:
    """Answers OpenID userinfo for `/v2/account/register`: the token is the user's localpart."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = urllib.parse.urlparse(self.path)
                if query.path != "/_matrix/federation/v1/openid/userinfo":
                    self.send_error(404)
                    return
                token = urllib.parse.parse_qs(query.query).get("access_token", [""])[0]
                body = json.dumps({"sub": f"@{token}:{HOMESERVER}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Sink:
    """The real SMTP server of the tests, on a fixed port so that it can come back there."""

    def __init__(self, folder):
        self.folder = folder
        self.port = free_port()
        self.process = None
        os.makedirs(folder, exist_ok=True)

    def start(self):
        # The child writes to it after this returns; it is closed when the child has stopped.
        self.log = open(os.path.join(self.folder, "..", "sink.log"), "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                *(env("FAULTS_SINK_PYTHON"), env("FAULTS_SINK"), "--host", "127.0.0.1"),
                *("--port", str(self.port), "--dir", self.folder),
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        line = self.process.stdout.readline().decode()
        expect(line.startswith("READY"), f"the SMTP sink did not start: {line!r}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.log.close()
        self.process = None

    def mails(self):
        """Every delivered message: (recipient, Message-ID, token)."""
        found = []
        for name in os.listdir(self.folder):
            if not name.endswith(".eml"):
                continue
            with open(os.path.join(self.folder, name), "rb") as f:
                raw = f.read()
            message = email.message_from_bytes(raw, policy=email.policy.default)
            token = TOKEN_LINE.search(raw)
            found.append(
                (
                    str(message["X-Sink-Rcpt-To"]).strip().lower(),
                    str(message["Message-ID"]).strip(),
                    token.group(1).decode() if token else None,
                )
            )
        return found


class Postgres:
    def __init__(self):
        self.admin_url = env("FAULTS_PG_URL")

    def database(self, name):
        subprocess.run(
            ["psql", self.admin_url, "-X", "-q", "-c", f"CREATE DATABASE {name}"], check=True
        )
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    @staticmethod
    def query(url, sql):
        out = subprocess.run(
            ["psql", url, "-X", "-q", "-At", "-F", "\t", "-c", sql],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    @staticmethod
    def stop():
        subprocess.run(env("FAULTS_PG_STOP"), shell=True, check=True)

    @staticmethod
    def start():
        subprocess.run(env("FAULTS_PG_START"), shell=True, check=True)


class Instance:
    """One `annuaire serve` process with its own configuration."""

    def __init__(self, name, work, database_url, sink, homeserver):
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.folder = os.path.join(work, name)
        os.makedirs(self.folder, exist_ok=True)
        self.log_path = os.path.join(self.folder, "annuaire.log")
        self.config = os.path.join(self.folder, "annuaire.toml")
        self.database_url = database_url
        self.process = None
        allowlists = os.path.join(work, "allowlists")
        os.makedirs(allowlists, exist_ok=True)
        with open(os.path.join(allowlists, "faults.toml"), "w") as f:
            f.write(
                f'[organisation]\nlabel = "Faults"\nhomeserver = "{HOMESERVER}"\n\n'
                f'[[domain]]\nname = "{DOMAIN}"\n'
            )
        with open(self.config, "w") as f:
            f.write(
                f"""[server]
name = "{SERVER_NAME}"
data_dir = "{self.folder}"

[http]
bind = "127.0.0.1:{self.port}"
workers = 2

[database]
url = "{database_url}"
pool_size = 8
connection_timeout = "{CONNECTION_TIMEOUT_S}s"

[log]
format = "json"

[policy]
allowlists_dir = "{allowlists}"
reload_interval = "500ms"

[rate_limits]
request_token_per_ip = {{ burst = 100000, every = "1ms" }}

[mail]
transport = "smtp"
from = "annuaire <noreply@faults.test>"

[mail.smtp]
host = "127.0.0.1"
port = {sink.port}
security = "none"
timeout = "{SMTP_TIMEOUT_S}s"

[mail.outbox]
initial_backoff = "500ms"
max_backoff = "2s"
max_attempts = 1000
poll_interval = "1s"

[federation.homeservers]
"{HOMESERVER}" = "{homeserver.url}"
"""
            )

    def start(self):
        # The child writes to it; closed here once the child has it (it keeps its own copy).
        log = open(self.log_path, "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [env("FAULTS_ANNUAIRE"), "--config", self.config, "serve"],
            stdout=log,
            stderr=log,
            cwd=self.folder,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            expect(self.process.poll() is None, f"{self.name} exited at start: see {self.log_path}")
            if call("GET", f"{self.base}/health/ready", timeout=5).status == 200:
                return
            time.sleep(0.1)
        raise Failure(f"{self.name} did not become ready in 60 s")

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def cli(self, *args, stdin=None):
        return subprocess.run(
            [env("FAULTS_ANNUAIRE"), "--config", self.config, *args],
            cwd=self.folder,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        ).stdout


class Nginx:
    def __init__(self, work, upstreams):
        self.folder = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.folder, "tmp"), exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(
            f"        server 127.0.0.1:{u.port} max_fails=1 fail_timeout=2s;" for u in upstreams
        )
        conf = os.path.join(self.folder, "nginx.conf")
        tmp = os.path.join(self.folder, "tmp")
        with open(conf, "w") as f:
            f.write(
                f"""daemon off;
worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream annuaire {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://annuaire;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""
            )
        stderr = open(os.path.join(self.folder, "stderr.log"), "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [env("NGINX"), "-p", self.folder, "-c", conf],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        stderr.close()
        deadline = time.monotonic() + 10
        while call("GET", f"{self.base}/health/live", timeout=2).status != 200:
            expect(time.monotonic() < deadline, "nginx did not start")
            time.sleep(0.1)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


# ---- what the load does ----


class Ledger:
    """What was asked and what was acknowledged, from many threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}
        self.acknowledged = {}
        self.statuses = {}
        self.slowest = 0.0
        self.done = 0

    def note(self, kind, reply, acknowledged_value=None):
        with self.lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1
            key = (kind, reply.status, reply.errcode)
            self.statuses[key] = self.statuses.get(key, 0) + 1
            self.slowest = max(self.slowest, reply.elapsed)
            if acknowledged_value is not None:
                self.acknowledged.setdefault(kind, []).append(acknowledged_value)
            self.done += 1

    def acked(self, kind):
        return self.acknowledged.get(kind, [])

    def count(self, kind):
        return self.requests.get(kind, 0)


def register(base, localpart):
    reply = call(
        "POST",
        f"{base}/_matrix/identity/v2/account/register",
        {
            "access_token": localpart,
            "token_type": "Bearer",
            "matrix_server_name": HOMESERVER,
            "expires_in": 3600,
        },
    )
    expect(reply.status == 200, f"register {localpart}: {reply.status} {reply.body}")
    return reply.body["token"]


def request_token(base, token, address, secret):
    return call(
        "POST",
        f"{base}/_matrix/identity/v2/validate/email/requestToken",
        {"client_secret": secret, "email": address, "send_attempt": 1},
        token,
    )


def wait_until(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class Users:
    """Identity accounts with a validated session each, ready to bind."""

    def __init__(self, base, sink, prefix, count):
        self.people = []
        names = [f"{prefix}{i}" for i in range(count)]

        def account(name):
            token = register(base, name)
            address = f"{name}@{DOMAIN}"
            reply = request_token(base, token, address, f"secret-{name}")
            expect(reply.status == 200, f"requestToken {address}: {reply.status} {reply.body}")
            return {"name": name, "token": token, "address": address, "sid": reply.body["sid"]}

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            self.people = list(pool.map(account, names))
        addresses = {p["address"] for p in self.people}
        wait_until(
            "the validation mails of the prepared users",
            lambda: addresses <= {m[0] for m in sink.mails()},
            60,
        )
        tokens = {m[0]: m[2] for m in sink.mails()}

        def submit(person):
            reply = call(
                "POST",
                f"{base}/_matrix/identity/v2/validate/email/submitToken",
                {
                    "sid": person["sid"],
                    "client_secret": f"secret-{person['name']}",
                    "token": tokens[person["address"]],
                },
                person["token"],
            )
            expect(reply.status == 200, f"submitToken: {reply.status} {reply.body}")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(submit, self.people))


def bind_op(base_of, person, ledger):
    reply = call(
        "POST",
        f"{base_of()}/_matrix/identity/v2/3pid/bind",
        {
            "sid": person["sid"],
            "client_secret": f"secret-{person['name']}",
            "mxid": f"@{person['name']}:{HOMESERVER}",
        },
        person["token"],
    )
    ack = (person["address"], f"@{person['name']}:{HOMESERVER}") if reply.status == 200 else None
    ledger.note("bind", reply, ack)
    return reply


def request_token_op(base_of, token, address, ledger):
    reply = request_token(base_of(), token, address, "load-secret")
    ledger.note("requestToken", reply, address if reply.status == 200 else None)
    return reply


def run_load(operations, workers, pace):
    """Runs the operations (callables) on `workers` threads, `pace` seconds apart on each; a
    failed connection waits a little longer, so the load outlasts a short outage."""
    chunks = [operations[i::workers] for i in range(workers)]

    def work(chunk):
        for op in chunk:
            reply = op()
            time.sleep(pace if reply.status else pace * 3)

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    return threads


def join(threads):
    for t in threads:
        t.join()


def outbox_drained(url):
    rows = Postgres.query(url, "SELECT count(*) FROM mail_outbox WHERE status = 'queued'")
    return rows[0][0] == "0"


def mail_figures(ledger, sink, url, label, kills=0):
    """Waits for the outbox to empty (a mail claimed by a killed instance waits for its lease to
    end), then compares the acknowledged requestTokens with the mails received.

    Sending a mail and recording that it was sent cannot be one transaction: an instance killed
    between the SMTP server's "250 accepted" and its own record sends that one mail again when
    the lease ends (at least once, never lost; the second copy is the same message, same
    Message-ID and token). So with `kills` instances killed, up to `kills` such resends are
    reported and tolerated; any other duplicate fails."""
    wait_until("the outbox to empty", lambda: outbox_drained(url), LEASE_S + 30)
    per_address = {}
    per_id = {}
    for recipient, message_id, _ in sink.mails():
        per_address[recipient] = per_address.get(recipient, 0) + 1
        per_id[message_id] = per_id.get(message_id, 0) + 1
    acked = ledger.acked("requestToken")
    found = [a for a in acked if per_address.get(a.lower(), 0) >= 1]
    resends = sum(n - 1 for n in per_id.values() if n > 1)
    # Two different messages to one address: never tolerated.
    distinct = {}
    for recipient, message_id, _ in sink.mails():
        distinct.setdefault(recipient, set()).add(message_id)
    duplicates = sum(len(ids) - 1 for ids in distinct.values() if len(ids) > 1)
    given_up = Postgres.query(url, "SELECT count(*) FROM mail_outbox WHERE status = 'failed'")[0][0]
    say(
        f"   {label}: requests {ledger.count('requestToken')}, acknowledged {len(acked)}, "
        f"mails found after {len(found)}, lost {len(acked) - len(found)}, "
        f"duplicates {duplicates + resends} ({resends} resent after the kill of the instance "
        f"that was sending them; exactly once: {'yes' if duplicates + resends == 0 else 'no'}), "
        f"given up {given_up}"
    )
    expect(len(found) == len(acked), "acknowledged requestTokens whose mail never came")
    expect(duplicates == 0, "two different mails for one requestToken")
    expect(
        resends <= kills, f"{resends} mails sent twice, more than the {kills} killed instance(s)"
    )
    expect(given_up == "0", "mails given up")


def bind_figures(ledger, url):
    stored = {(a, m) for a, m in Postgres.query(url, "SELECT address, mxid FROM associations")}
    acked = ledger.acked("bind")
    found = [b for b in acked if b in stored]
    say(
        f"   binds: requests {ledger.count('bind')}, acknowledged {len(acked)}, "
        f"found after {len(found)}, lost {len(acked) - len(found)}"
    )
    expect(len(found) == len(acked), "acknowledged binds missing after the fault")


def statuses(ledger):
    parts = [
        f"{k} {s or 'no answer'}{' ' + e if e else ''}: {n}"
        for (k, s, e), n in sorted(ledger.statuses.items(), key=str)
    ]
    say("   answers: " + "; ".join(parts))


# ---- scenarios ----


class Context:
    def __init__(self, work):
        self.work = work
        self.pg = Postgres()
        self.homeserver = Homeserver()
        self.cleanup = []

    def scenario_dir(self, name):
        folder = os.path.join(self.work, name)
        os.makedirs(folder, exist_ok=True)
        return folder

    def setup(self, name, instances=1):
        folder = self.scenario_dir(name)
        url = self.pg.database(f"faults_{name}")
        sink = Sink(os.path.join(folder, "mail"))
        sink.start()
        self.cleanup.append(sink.stop)
        started = []
        for i in range(instances):
            inst = Instance(f"instance-{'ab'[i]}", folder, url, sink, self.homeserver)
            inst.start()
            self.cleanup.append(inst.stop)
            started.append(inst)
        return url, sink, started

    def close(self):
        for stop in reversed(self.cleanup):
            try:
                stop()
            except Exception as e:  # cleanup goes on whatever failed
                say(f"   (cleanup: {e})")
        self.cleanup = []


def scenario_kill9(ctx):
    say("== fault: kill -9 of the serving instance during binds and requestTokens")
    url, sink, (inst,) = ctx.setup("kill9")
    users = Users(inst.base, sink, "k", 40)
    loader = register(inst.base, "loader")
    ledger = Ledger()
    base = lambda: inst.base  # noqa: E731 - the same instance, restarted
    ops = [lambda p=p: bind_op(base, p, ledger) for p in users.people]
    ops += [
        lambda i=i: request_token_op(base, loader, f"rt{i}@{DOMAIN}", ledger) for i in range(120)
    ]
    random.Random(15).shuffle(ops)  # binds and requestTokens mixed, the same way every run
    threads = run_load(ops, 4, 0.1)
    wait_until("a third of the load", lambda: ledger.done >= len(ops) // 3, 60)
    inst.kill9()
    killed_at = ledger.done
    time.sleep(1)
    inst.start()
    restarted_at = ledger.done
    join(threads)
    say(
        f"   killed after {killed_at} of {len(ops)} requests; back after {restarted_at}; "
        f"{len(ops) - restarted_at} requests after the restart"
    )
    statuses(ledger)
    expect(len(ops) - restarted_at > 0, "no load after the restart: the scenario proves nothing")
    bind_figures(ledger, url)
    mail_figures(ledger, sink, url, "requestTokens", kills=1)


def scenario_smtp(ctx, outage):
    say(f"== fault: the SMTP server down for {outage} s during a requestToken load")
    url, sink, (inst,) = ctx.setup("smtp")
    loader = register(inst.base, "loader")
    ledger = Ledger()
    rate = 4  # requests per second
    total = int((outage + 6) * rate)
    ops = [
        lambda i=i: request_token_op(lambda: inst.base, loader, f"smtp{i}@{DOMAIN}", ledger)
        for i in range(total)
    ]
    threads = run_load(ops, 1, 1 / rate)
    time.sleep(3)
    sink.stop()
    down_at = ledger.done
    time.sleep(outage)
    sink.start()
    up_at = ledger.done
    join(threads)
    say(
        f"   sink stopped after {down_at} requests, back after {up_at} "
        f"({up_at - down_at} during the outage)"
    )
    statuses(ledger)
    expect(up_at - down_at > 0, "no request during the outage: the scenario proves nothing")
    mail_figures(ledger, sink, url, "requestTokens")
    retries = Postgres.query(url, "SELECT coalesce(sum(attempts), 0), count(*) FROM mail_outbox")[0]
    say(f"   delivery attempts {retries[0]} for {retries[1]} mails")


def scenario_postgres(ctx):
    say("== fault: PostgreSQL stopped and started again during load")
    _, _, (inst,) = ctx.setup("postgres")
    loader = register(inst.base, "loader")
    pid = inst.process.pid
    ledger = Ledger()
    readiness = []
    stop_polling = threading.Event()

    def poll_ready():
        while not stop_polling.is_set():
            reply = call("GET", f"{inst.base}/health/ready", timeout=30)
            readiness.append((time.monotonic(), reply.status, reply.errcode, reply.elapsed))
            time.sleep(0.2)

    poller = threading.Thread(target=poll_ready)
    poller.start()
    counter = iter(range(10**6))

    def info_op():
        reply = call(
            "GET",
            f"{inst.base}/_matrix/identity/api/v1/info?medium=email&address=x@{DOMAIN}",
        )
        ledger.note("info", reply, True if reply.status == 200 else None)
        return reply

    def rt_op():
        return request_token_op(lambda: inst.base, loader, f"pg{next(counter)}@{DOMAIN}", ledger)

    ops = [rt_op if i % 2 else info_op for i in range(240)]
    threads = run_load(ops, 4, 0.1)
    time.sleep(2)
    stopped = time.monotonic()
    ctx.pg.stop()
    time.sleep(5)
    ctx.pg.start()
    started = time.monotonic()
    join(threads)
    # Back to normal without a restart.
    wait_until("/health/ready to answer 200", lambda: readiness and readiness[-1][1] == 200, 30)
    after = [
        call("GET", f"{inst.base}/_matrix/identity/api/v1/info?medium=email&address=y@{DOMAIN}")
        for _ in range(5)
    ]
    after.append(request_token(inst.base, loader, f"after@{DOMAIN}", "s"))
    stop_polling.set()
    poller.join()
    statuses(ledger)
    states = [s for _, s, _, _ in readiness]
    during = [(s, e) for t, s, e, _ in readiness if stopped <= t <= started]
    compact = []
    for s in states:
        if not compact or compact[-1] != s:
            compact.append(s)
    say(f"   /health/ready: {' -> '.join(map(str, compact))} ({len(states)} polls)")
    bad = {
        k: n
        for k, n in ledger.statuses.items()
        if k[1] not in (200, 503) or (k[1] == 503 and not k[2])
    }
    slowest = max([ledger.slowest] + [r[3] for r in readiness])
    say(
        f"   requests {sum(ledger.requests.values())}, answered 200 "
        f"{sum(n for k, n in ledger.statuses.items() if k[1] == 200)}, 503 "
        f"{sum(n for k, n in ledger.statuses.items() if k[1] == 503)}, other {sum(bad.values())}; "
        f"slowest answer {slowest:.2f} s (connection timeout {CONNECTION_TIMEOUT_S} s)"
    )
    say(
        f"   after the restart: {[r.status for r in after]}; "
        f"same process: {inst.alive() and inst.process.pid == pid}"
    )
    expect(
        compact[0] == 200 and 503 in compact and compact[-1] == 200,
        "/health/ready did not go 200 -> 503 -> 200",
    )
    expect(any(s == 503 for s, _ in during), "/health/ready never said the database was gone")
    expect(not bad, f"answers other than 200 or a 503 Matrix error: {bad}")
    expect(
        slowest < CONNECTION_TIMEOUT_S + 3,
        "an answer took longer than the connection timeout allows",
    )
    expect(all(r.status == 200 for r in after), "not recovered after PostgreSQL came back")
    expect(inst.alive() and inst.process.pid == pid, "the instance did not survive")
    expect("panicked" not in inst.log(), "a panic in the log")


def scenario_nginx(ctx):
    say("== fault: two instances on one PostgreSQL behind nginx, one killed mid-load")
    url, sink, (a, b) = ctx.setup("nginx", instances=2)
    proxy = Nginx(ctx.scenario_dir("nginx"), [a, b])
    ctx.cleanup.append(proxy.stop)
    password = "operator password 1"
    b.cli("admin", "add", "ops", "--role", "editor", stdin=password + "\n")
    users = Users(proxy.base, sink, "n", 40)
    loader = register(proxy.base, "loader")
    ledger = Ledger()
    base = lambda: proxy.base  # noqa: E731
    ops = [lambda p=p: bind_op(base, p, ledger) for p in users.people]
    ops += [
        lambda i=i: request_token_op(base, loader, f"ng{i}@{DOMAIN}", ledger) for i in range(120)
    ]
    random.Random(15).shuffle(ops)
    threads = run_load(ops, 4, 0.1)
    wait_until("a third of the load", lambda: ledger.done >= len(ops) // 3, 60)
    a.kill9()
    killed_at = ledger.done
    # A rule changed through the survivor while the other is down.
    login = call(
        "POST",
        f"{b.base}/_annuaire/admin/v1/login",
        {"username": "ops", "password": password},
    )
    expect(login.status == 200, f"login on the survivor: {login.status} {login.body}")
    admin = login.body["access_token"]
    rule = call(
        "POST",
        f"{b.base}/_annuaire/admin/v1/rules",
        {"kind": "domain", "name": "later.example", "homeserver": HOMESERVER},
        admin,
    )
    expect(rule.status == 201, f"rule through the survivor: {rule.status} {rule.body}")
    time.sleep(1)
    a.start()
    restarted_at = ledger.done
    join(threads)
    say(
        f"   instance-a killed after {killed_at} of {len(ops)} requests, back after "
        f"{restarted_at}; {len(ops) - restarted_at} requests after its restart"
    )
    statuses(ledger)

    def decision(inst, address):
        reply = call(
            "GET", f"{inst.base}/_matrix/identity/api/v1/info?medium=email&address={address}"
        )
        return reply.body.get("decision") if isinstance(reply.body, dict) else None

    seen_at_start = decision(a, "x@later.example")
    # And a rule changed through the survivor once the other is back: it reaches it by polling.
    rule2 = call(
        "POST",
        f"{b.base}/_annuaire/admin/v1/rules",
        {"kind": "domain", "name": "later-still.example", "homeserver": HOMESERVER},
        admin,
    )
    expect(rule2.status == 201, f"second rule: {rule2.status} {rule2.body}")
    wait_until(
        "the restarted instance to apply the second rule",
        lambda: decision(a, "x@later-still.example") == "allowed",
        30,
    )
    say(
        "   rules made through instance-b reach the restarted instance-a: "
        f"the one made while it was down (at its start: {seen_at_start}), the next by polling"
    )
    expect(seen_at_start == "allowed", "the rule made while instance-a was down did not reach it")
    bind_figures(ledger, url)
    mail_figures(ledger, sink, url, "requestTokens", kills=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=["kill9", "smtp", "postgres", "nginx"])
    args = parser.parse_args()
    outage = int(os.environ.get("FAULTS_SMTP_OUTAGE", "60"))
    ctx = Context(env("FAULTS_WORK"))
    chosen = args.only or ["kill9", "smtp", "postgres", "nginx"]
    scenarios = {
        "kill9": lambda: scenario_kill9(ctx),
        "smtp": lambda: scenario_smtp(ctx, outage),
        "postgres": lambda: scenario_postgres(ctx),
        "nginx": lambda: scenario_nginx(ctx),
    }
    failed = []
    for name in chosen:
        started = time.monotonic()
        try:
            scenarios[name]()
            say(f"== {name}: passed in {time.monotonic() - started:.0f} s")
        except Failure as e:
            say(f"== {name}: FAILED after {time.monotonic() - started:.0f} s: {e}")
            failed.append(name)
        finally:
            ctx.close()
    if failed:
        say(f"faults: {len(failed)} of {len(chosen)} scenarios failed: {', '.join(failed)}")
        sys.exit(1)
    say(f"faults: {len(chosen)} scenarios passed")


if __name__ == "__main__":
    main()
