#!/usr/bin/env python3
"""A real SMTP server that stores every message it accepts, for annuaire's tests.

    python smtp_sink.py --host 127.0.0.1 --port 0 --dir DIR
        [--tls-cert CERT.pem --tls-key KEY.pem [--implicit-tls]]
        [--require-auth USER:PASS] [--reject-rcpt ADDR]... [--defer-rcpt ADDR]...

Each accepted message becomes DIR/<n>.eml (n = 1, 2, ... continuing after the files already
there, so a restarted sink never overwrites), written atomically (hidden temporary file, then
rename). The envelope and the session are prepended as headers:

    X-Sink-Mail-From: <sender>
    X-Sink-Rcpt-To: <recipient>[, <recipient>...]
    X-Sink-TLS: yes|no
    X-Sink-Auth: <login>            (only when the client authenticated)

With --tls-cert/--tls-key the server offers STARTTLS (or, with --implicit-tls, speaks TLS from
the first byte). --reject-rcpt answers 550 for that recipient, --defer-rcpt 451, so callers can
test permanent and transient failures.

Prints "READY <port>" on stdout once listening (--port 0 picks a free port) and stops cleanly
on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import logging
import os
import re
import signal
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

EML_NAME = re.compile(r"^(\d+)\.eml$")


class Sink:
    """aiosmtpd handler: recipient checks and atomic storage."""

    def __init__(self, directory, reject, defer):
        self.directory = directory
        self.reject = {a.lower() for a in reject}
        self.defer = {a.lower() for a in defer}
        existing = [int(m.group(1)) for m in map(EML_NAME.match, os.listdir(directory)) if m]
        self.next_number = max(existing, default=0) + 1

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 Mailbox unavailable"
        if address.lower() in self.defer:
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        number = self.next_number
        self.next_number += 1
        header = (
            f"X-Sink-Mail-From: {envelope.mail_from}\r\n"
            f"X-Sink-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n"
            f"X-Sink-TLS: {'yes' if uses_tls(server, session) else 'no'}\r\n"
        )
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            header += f"X-Sink-Auth: {session.auth_data.login.decode('utf-8', 'replace')}\r\n"
        content = envelope.original_content or b""
        final = os.path.join(self.directory, f"{number}.eml")
        temporary = os.path.join(self.directory, f".{number}.eml.tmp")
        with open(temporary, "wb") as out:
            out.write(header.encode("utf-8"))
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
        return "250 2.0.0 Message accepted for delivery"


def uses_tls(server, session):
    """STARTTLS sets session.ssl; with implicit TLS, the transport itself is TLS."""
    if session.ssl:
        return True
    transport = getattr(server, "transport", None)
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def make_authenticator(credentials):
    user, _, password = credentials.partition(":")
    expected = LoginPassword(user.encode(), password.encode())

    def authenticator(server, session, envelope, mechanism, auth_data):
        # auth_data is kept on the session (X-Sink-Auth) only when returned here;
        # handled=False lets aiosmtpd answer 535 itself on failure (the default waits forever).
        return AuthResult(success=auth_data == expected, handled=False, auth_data=auth_data)

    return authenticator


async def serve(args):
    os.makedirs(args.dir, exist_ok=True)
    handler = Sink(args.dir, args.reject_rcpt, args.defer_rcpt)

    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)

    smtp_options = {
        "hostname": "smtp-sink.test",
        "enable_SMTPUTF8": True,
        "decode_data": False,
    }
    if context is not None and not args.implicit_tls:
        smtp_options["tls_context"] = context
    if args.require_auth:
        smtp_options["authenticator"] = make_authenticator(args.require_auth)
        smtp_options["auth_required"] = True
        # Without any TLS, authentication has to be allowed in clear (tests only).
        smtp_options["auth_require_tls"] = context is not None

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, **smtp_options),
        host=args.host,
        port=args.port,
        ssl=context if args.implicit_tls else None,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dir", required=True, help="where <n>.eml files are written")
    parser.add_argument("--tls-cert", help="PEM certificate chain: offers STARTTLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    parser.add_argument("--require-auth", metavar="USER:PASS", help="require AUTH PLAIN/LOGIN")
    parser.add_argument("--reject-rcpt", action="append", default=[], metavar="ADDR",
                        help="answer 550 for this recipient")
    parser.add_argument("--defer-rcpt", action="append", default=[], metavar="ADDR",
                        help="answer 451 for this recipient")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.implicit_tls and not args.tls_cert:
        parser.error("--implicit-tls needs --tls-cert and --tls-key")

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Authentication in clear is what --require-auth without TLS asks for, and aiosmtpd warns
    # about its own use of login_data: neither says anything about the client under test.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    expected_noise = ("auth_require_tls == False", "Session.login_data is deprecated")
    logging.getLogger("mail.log").addFilter(
        lambda record: not any(text in record.getMessage() for text in expected_noise))
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
