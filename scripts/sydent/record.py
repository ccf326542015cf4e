#!/usr/bin/env python3
"""Walks a running Sydent's v2 API the way a deployment uses it, and records its answers.

Called by `scripts/sydent/env.sh record`, which starts the SMTP sink, the homeserver and Sydent.
What it does, in order (each step through Sydent's HTTP API, as clients and homeservers do):

1. the homeserver gives the user an OpenID token; Sydent's /v2/account/register checks it with
   the homeserver over federation and issues an identity access token;
2. the user accepts Sydent's terms (/v2/terms);
3. an email address is validated (/v2/validate/email/requestToken, the mail read from the sink,
   /submitToken) and bound to the user (/v2/3pid/bind);
4. the user invites another address into a real room (/v2/store-invite); the invitation mail
   carries the ephemeral private key;
5. the answers a migration must preserve are recorded: /v2/hash_details, /v2/lookup (sha256 and
   none), /v2/pubkey/ed25519:0, /v2/pubkey/isvalid, /v2/pubkey/ephemeral/isvalid,
   /v2/sign-ed25519 (with the ephemeral private key of the mail), /v2/account, /v2/terms, and
   the signed association of /api/v1/lookup.

The result is a JSON file (stdlib only, so any Python runs this).
"""

import argparse
import base64
import email
import hashlib
import json
import os
import re
import secrets
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BOUND_INPUT = "Alice.Martin@Sydent-Import.Example"
BOUND_ADDRESS = "alice.martin@sydent-import.example"
INVITED_INPUT = "Bob.Durand@Sydent-Import.Example"
INVITED_ADDRESS = "bob.durand@sydent-import.example"
UNBOUND_ADDRESS = "nobody@sydent-import.example"


def call(method, url, body=None, token=None, expect=200):
    """One JSON request; returns the decoded answer, fails on another status than `expect`."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    context = ssl.create_default_context()
    # The homeserver's certificate comes from a throwaway CA.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode(errors="replace")
    if status != expect:
        sys.exit(f"{method} {url}: HTTP {status} (expected {expect}): {text}")
    return json.loads(text) if text else None


def wait_for_mail(mail_dir, recipient, marker, seen):
    """The first message to `recipient` not in `seen` that has `marker` (polls the sink)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name in sorted(os.listdir(mail_dir), key=lambda n: (len(n), n)):
            if not name.endswith(".eml") or name in seen:
                continue
            with open(os.path.join(mail_dir, name), "rb") as f:
                message = email.message_from_bytes(f.read())
            if recipient.lower() not in message.get("X-Sink-Rcpt-To", "").lower():
                continue
            body = message.get_payload(decode=True).decode()
            if marker in body:
                seen.add(name)
                return body
        time.sleep(0.1)
    sys.exit(f"no mail with {marker} for {recipient} within 30 s")


def mail_value(body, key):
    match = re.search(rf"^{key}=(\S+)", body, re.MULTILINE)
    if not match:
        sys.exit(f"no {key}= in the mail: {body!r}")
    return match.group(1)


def lookup_hash(address, medium, pepper):
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sydent", required=True, help="Sydent's base URL")
    parser.add_argument("--homeserver", required=True, help="the homeserver's base URL")
    parser.add_argument("--user", required=True, help="JSON of the registered user")
    parser.add_argument("--mail-dir", required=True, help="where the SMTP sink writes")
    parser.add_argument("--conf", required=True, help="Sydent's sydent.conf")
    parser.add_argument("--terms", required=True, help="Sydent's terms.yaml (for the record)")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    args = parser.parse_args()

    sydent = args.sydent.rstrip("/")
    v2 = sydent + "/_matrix/identity/v2"
    hs = args.homeserver.rstrip("/")
    user = json.loads(args.user)
    user_id, hs_token = user["user_id"], user["access_token"]
    seen = set()

    # 1. OpenID token from the homeserver, exchanged for an identity access token.
    openid = call(
        "POST",
        f"{hs}/_matrix/client/v3/user/{urllib.parse.quote(user_id)}/openid/request_token",
        {},
        token=hs_token,
    )
    registered = call("POST", f"{v2}/account/register", openid)
    token = registered["token"]
    call("GET", f"{v2}/hash_details", token=token, expect=403)  # terms not accepted yet

    # 2. Terms.
    terms = call("GET", f"{v2}/terms")
    urls = [terms["policies"]["privacy_policy"]["en"]["url"]]
    call("POST", f"{v2}/terms", {"user_accepts": urls}, token=token)

    # 3. Validate and bind an address.
    client_secret = "cs" + secrets.token_hex(8)
    session = call(
        "POST",
        f"{v2}/validate/email/requestToken",
        {"client_secret": client_secret, "email": BOUND_INPUT, "send_attempt": 1},
        token=token,
    )
    body = wait_for_mail(args.mail_dir, BOUND_ADDRESS, "TOKEN=", seen)
    submitted = call(
        "POST",
        f"{v2}/validate/email/submitToken",
        {"sid": session["sid"], "client_secret": client_secret, "token": mail_value(body, "TOKEN")},
        token=token,
    )
    assert submitted.get("success") is True, submitted
    bound = call(
        "POST",
        f"{v2}/3pid/bind",
        {"sid": session["sid"], "client_secret": client_secret, "mxid": user_id},
        token=token,
    )

    # 4. Invite another address into a real room.
    room = call("POST", f"{hs}/_matrix/client/v3/createRoom", {"name": "Import"}, token=hs_token)
    invite = call(
        "POST",
        f"{v2}/store-invite",
        {
            "medium": "email",
            "address": INVITED_INPUT,
            "room_id": room["room_id"],
            "sender": user_id,
            "room_name": "Import",
            "sender_display_name": "Alice",
        },
        token=token,
    )
    body = wait_for_mail(args.mail_dir, INVITED_ADDRESS, "INVITE_TOKEN=", seen)
    assert mail_value(body, "INVITE_TOKEN") == invite["token"], "the mail names another invite"
    ephemeral_private_key = mail_value(body, "EPHEMERAL_PRIVATE_KEY")

    # 5. The answers a migration must keep.
    hash_details = call("GET", f"{v2}/hash_details", token=token)
    pepper = hash_details["lookup_pepper"]
    hashed = {
        "algorithm": "sha256",
        "pepper": pepper,
        "addresses": [
            lookup_hash(BOUND_ADDRESS, "email", pepper),
            lookup_hash(INVITED_ADDRESS, "email", pepper),
            lookup_hash(UNBOUND_ADDRESS, "email", pepper),
        ],
    }
    plain = {
        "algorithm": "none",
        "pepper": pepper,
        "addresses": [f"{BOUND_ADDRESS} email", f"{UNBOUND_ADDRESS} email"],
    }
    pubkey = call("GET", f"{v2}/pubkey/ed25519:0")
    ephemeral_key = invite["public_keys"][1]["public_key"]
    quoted = urllib.parse.quote
    answers = {
        "hash_details": hash_details,
        "lookup_sha256": {
            "request": hashed,
            "response": call("POST", f"{v2}/lookup", hashed, token=token),
        },
        "lookup_none": {
            "request": plain,
            "response": call("POST", f"{v2}/lookup", plain, token=token),
        },
        "pubkey": pubkey,
        "pubkey_isvalid": call(
            "GET", f"{v2}/pubkey/isvalid?public_key={quoted(pubkey['public_key'])}"
        ),
        "ephemeral_isvalid": call(
            "GET", f"{v2}/pubkey/ephemeral/isvalid?public_key={quoted(ephemeral_key)}"
        ),
        "ephemeral_isvalid_unknown": call(
            "GET", f"{v2}/pubkey/ephemeral/isvalid?public_key={quoted(pubkey['public_key'])}"
        ),
        "sign_ed25519": call(
            "POST",
            f"{v2}/sign-ed25519",
            {"mxid": user_id, "token": invite["token"], "private_key": ephemeral_private_key},
            token=token,
        ),
        "account": call("GET", f"{v2}/account", token=token),
        "terms": terms,
        "bind": bound,
        "store_invite": invite,
        "v1_lookup": call(
            "GET",
            f"{sydent}/_matrix/identity/api/v1/lookup?medium=email&address={quoted(BOUND_ADDRESS)}",
        ),
    }
    record = {
        "sydent_version": "2.6.1",
        "server_name": bound["signatures"] and next(iter(bound["signatures"])),
        "user_id": user_id,
        "access_token": token,
        "accepted_terms_urls": urls,
        "bound_address": BOUND_ADDRESS,
        "invited_address": INVITED_ADDRESS,
        "unbound_address": UNBOUND_ADDRESS,
        "room_id": room["room_id"],
        "ephemeral_private_key": ephemeral_private_key,
        "answers": answers,
    }
    with open(args.out, "w") as out:
        json.dump(record, out, indent=2, sort_keys=True)
        out.write("\n")
    print(f"recorded {len(answers)} answers of Sydent in {args.out}")


if __name__ == "__main__":
    main()
