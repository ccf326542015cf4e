#!/usr/bin/env python3
"""A synthetic Sydent database of N associations, for timing `annuaire import sydent`.

    .venv/sydent/bin/python scripts/sydent/synthetic.py OUT.db N
    (or: scripts/sydent/env.sh synthetic OUT.db N)

The schema is made by Sydent's own code (sydent.db.sqlitedb.SqliteDatabase: the .sql files and
every migration, to user_version 5), and the rows are what Sydent writes: each bind a local
row and its global copy with the signed association (signedjson, as Sydent signs), the lookup
hashes under the pepper. Besides the N local binds: N/100 associations replicated from a peer
(whose key is in peer_pubkeys), N/1000 with a forged signature, N/1000 unbinds (tombstones),
N/10 accounts with a token and accepted terms, N/100 pending invitations with their ephemeral
keys. The signing key and server name go to OUT.conf (a sydent.conf), for --sydent-config.
"""

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import secrets
import sys
import time
from types import SimpleNamespace

import nacl.signing
import signedjson.key
import signedjson.sign
from sydent.db.sqlitedb import SqliteDatabase

SERVER = "sydent.synthetic.example"
PEER = "peer.synthetic.example"
LIFETIME_MS = 100 * 365 * 24 * 60 * 60 * 1000


def lookup_hash(address, pepper):
    digest = hashlib.sha256(f"{address} email {pepper}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def address(i, kind="agent"):
    return f"{kind}.{i:07d}@ministere-{i % 20:02d}.gouv.example"


def mxid(i):
    return f"@agent{i}:hs{i % 17}.gouv.example"


_key = None


def _init(seed, version):
    global _key
    _key = nacl.signing.SigningKey(seed)
    _key.version = version
    _key.alg = "ed25519"


def _sign(job):
    server, assoc = job
    return json.dumps(signedjson.sign.sign_json(assoc, server, _key))


def signed(key, server, assocs):
    """Signs associations on every core (signing dominates the generation)."""
    with multiprocessing.Pool(initializer=_init, initargs=(key.encode(), key.version)) as pool:
        return pool.map(_sign, [(server, a) for a in assocs], chunksize=2000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the database to write (must not exist)")
    parser.add_argument("n", type=int, help="number of local associations")
    args = parser.parse_args()
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists")
    n = args.n
    started = time.monotonic()

    # Sydent's own schema code (it only reads config.database.database_path).
    stub = SimpleNamespace(config=SimpleNamespace(database=SimpleNamespace(database_path=args.out)))
    db = SqliteDatabase(stub).db
    assert db.execute("PRAGMA user_version").fetchone()[0] == 5

    key = signedjson.key.generate_signing_key("0")
    peer_key = signedjson.key.generate_signing_key("0")
    forger = signedjson.key.generate_signing_key("0")
    pepper = secrets.token_urlsafe(4)[:5]
    now = int(time.time() * 1000)
    db.execute("INSERT INTO hashing_metadata (id, lookup_pepper) VALUES (0, ?)", (pepper,))

    def assoc(addr, user, ts):
        return {
            "medium": "email",
            "address": addr,
            "mxid": user,
            "ts": ts,
            "not_before": ts,
            "not_after": ts + LIFETIME_MS,
        }

    local = [assoc(address(i), mxid(i), now - (n - i) * 1000) for i in range(1, n + 1)]
    db.executemany(
        "INSERT INTO local_threepid_associations "
        "(id, medium, address, lookup_hash, mxid, ts, notBefore, notAfter) "
        "VALUES (?, 'email', ?, ?, ?, ?, ?, ?)",
        (
            (
                i + 1,
                a["address"],
                lookup_hash(a["address"], pepper),
                a["mxid"],
                a["ts"],
                a["not_before"],
                a["not_after"],
            )
            for i, a in enumerate(local)
        ),
    )
    own_signed = signed(key, SERVER, local)
    db.executemany(
        "INSERT INTO global_threepid_associations "
        "(medium, address, lookup_hash, mxid, ts, notBefore, notAfter, originServer, originId, "
        "sgAssoc) VALUES ('email', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                a["address"],
                lookup_hash(a["address"], pepper),
                a["mxid"],
                a["ts"],
                a["not_before"],
                a["not_after"],
                SERVER,
                i + 1,
                sg,
            )
            for i, (a, sg) in enumerate(zip(local, own_signed))
        ),
    )

    # Replicated from a peer, a few of them forged.
    db.execute(
        "INSERT INTO peers (name, port, lastSentVersion, active) VALUES (?, 443, 0, 1)", (PEER,)
    )
    db.execute(
        "INSERT INTO peer_pubkeys (peername, alg, key) VALUES (?, 'ed25519', ?)",
        (PEER, signedjson.key.encode_verify_key_base64(peer_key.verify_key)),
    )
    peer = [assoc(address(i, "peer"), mxid(i), now - i) for i in range(1, n // 100 + 1)]
    forged = [assoc(address(i, "forged"), mxid(i), now - i) for i in range(1, n // 1000 + 1)]
    rows = list(zip(peer, signed(peer_key, PEER, peer))) + list(
        zip(forged, signed(forger, PEER, forged))
    )
    db.executemany(
        "INSERT INTO global_threepid_associations "
        "(medium, address, lookup_hash, mxid, ts, notBefore, notAfter, originServer, originId, "
        "sgAssoc) VALUES ('email', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                a["address"],
                lookup_hash(a["address"], pepper),
                a["mxid"],
                a["ts"],
                a["not_before"],
                a["not_after"],
                PEER,
                i + 1,
                sg,
            )
            for i, (a, sg) in enumerate(rows)
        ),
    )
    # Unbinds: Sydent keeps a local row without mxid and deletes the global one.
    db.executemany(
        "INSERT INTO local_threepid_associations (medium, address, mxid, ts, notBefore, notAfter) "
        "VALUES ('email', ?, NULL, ?, NULL, NULL)",
        ((address(i, "gone"), now - i) for i in range(1, n // 1000 + 1)),
    )

    accounts = [(mxid(i), now - i * 1000) for i in range(1, n // 10 + 1)]
    db.executemany(
        "INSERT INTO accounts (user_id, created_ts, consent_version) VALUES (?, ?, '1.0')",
        accounts,
    )
    db.executemany(
        "INSERT INTO tokens (token, user_id) VALUES (?, ?)",
        ((secrets.token_urlsafe(48), user) for user, _ in accounts),
    )
    db.executemany(
        "INSERT INTO accepted_terms_urls (user_id, url) VALUES (?, ?)",
        ((user, "https://sydent.synthetic.example/terms-1.0-en.html") for user, _ in accounts),
    )

    # Pending invitations: the ephemeral key, then the invitation, as store-invite does.
    seconds = now // 1000
    for i in range(1, n // 100 + 1):
        ephemeral = nacl.signing.SigningKey.generate().verify_key.encode()
        db.execute(
            "INSERT INTO ephemeral_public_keys (public_key, persistence_ts) VALUES (?, ?)",
            (base64.urlsafe_b64encode(ephemeral).decode().rstrip("="), seconds - 60 + i % 60),
        )
        db.execute(
            "INSERT INTO invite_tokens (medium, address, room_id, sender, token, received_ts) "
            "VALUES ('email', ?, ?, ?, ?, ?)",
            (
                address(i, "invited"),
                f"!room{i}:hs1.gouv.example",
                mxid(i),
                secrets.token_urlsafe(96),
                seconds - 60 + i % 60,
            ),
        )
    db.commit()
    db.close()

    with open(os.path.splitext(args.out)[0] + ".conf", "w") as conf:
        conf.write(
            f"[general]\nserver.name = {SERVER}\n\n[db]\ndb.file = {os.path.abspath(args.out)}\n\n"
            f"[crypto]\ned25519.signingkey = ed25519 0 "
            f"{signedjson.key.encode_signing_key_base64(key)}\n"
        )
    print(
        f"{args.out}: {n} local associations (+{len(peer)} from a peer, {len(forged)} forged, "
        f"{n // 1000} unbinds), {len(accounts)} accounts, {n // 100} invitations, "
        f"in {time.monotonic() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
