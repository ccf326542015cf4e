#!/usr/bin/env python3
"""Create a Synapse user with the shared-secret admin API (standard library only).

GET /_synapse/admin/v1/register gives a nonce; POST the same path with
{nonce, username, password, admin, mac}, where mac is the HMAC-SHA1 of
"nonce\\0username\\0password\\0admin|notadmin" keyed with registration_shared_secret.
Prints Synapse's JSON answer (user_id, access_token, device_id, home_server) on stdout.

usage: register_user.py --url URL --shared-secret SECRET USERNAME PASSWORD [--admin]
"""

import argparse
import hashlib
import hmac
import json
import ssl
import sys
import urllib.error
import urllib.request


def _call(url: str, body: dict | None = None) -> dict:
    # The test homeservers use a throwaway CA: do not verify certificates here.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        sys.exit(f"register_user: {req.get_method()} {url}: HTTP {err.code}: {err.read().decode(errors='replace')}")


def register(base_url: str, secret: str, username: str, password: str, admin: bool) -> dict:
    endpoint = base_url.rstrip("/") + "/_synapse/admin/v1/register"
    nonce = _call(endpoint)["nonce"]
    message = b"\x00".join(
        [nonce.encode(), username.encode(), password.encode(), b"admin" if admin else b"notadmin"]
    )
    mac = hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()
    return _call(
        endpoint,
        {"nonce": nonce, "username": username, "password": password, "admin": admin, "mac": mac},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="homeserver base URL, e.g. http://127.0.0.1:8008")
    parser.add_argument("--shared-secret", required=True, help="registration_shared_secret")
    parser.add_argument("--admin", action="store_true", help="make the user a server admin")
    parser.add_argument("username")
    parser.add_argument("password")
    args = parser.parse_args()
    answer = register(args.url, args.shared_secret, args.username, args.password, args.admin)
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
