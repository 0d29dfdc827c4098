"""nats-server configuration rendered from the bus permission table (`aigw_runtime.natsauth`).

One renderer for every deployment: `make run` (and every `Stack`) writes its config with it, and
`aigw-dev nats-config` renders the same for docker compose and Kubernetes, so the users and their
rights are the same everywhere and are never written out by hand.

Passwords: random, URL-safe (they travel inside `AIGW_NATS_URL`). A deployment's config stores them
as bcrypt hashes (nats-server checks `$2a$` passwords with bcrypt), so the server's config holds no
secret a service could connect with. `make run` writes them in the clear into its own 0600 files
instead: the plain passwords lie beside them in the same state folder anyway, and bcrypt would cost
every connection a third of a second of CPU.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from aigw_runtime.bus import redact_url
from aigw_runtime.natsauth import PERMISSIONS, USERS, Permissions, url_for

BCRYPT_ROUNDS = 11  # nats-server's own `nats server passwd` default


def new_password() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    # `$2a$`: the prefix every nats-server version recognizes as bcrypt.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds, prefix=b"2a")).decode()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never readable by others even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_passwords(path: Path) -> dict[str, str]:
    """The passwords kept in `path` (0600), with one made for every user that has none yet."""
    passwords: dict[str, str] = {}
    if path.exists():
        passwords = json.loads(path.read_text())
    missing = [user for user in USERS if user not in passwords]
    if missing or path.stat().st_mode & 0o077:
        passwords.update({user: new_password() for user in missing})
        write_private(path, json.dumps(passwords, indent=2) + "\n")
    return passwords


@dataclass(frozen=True)
class Tls:
    """The server's certificate: every client connection is then TLS (clients verify the server
    with their system CAs, or the CA in `SSL_CERT_FILE`). No client certificates: the services
    authenticate with their passwords, which TLS keeps off the wire."""

    cert_file: str
    key_file: str


def _user_block(user: str, password: str, perms: Permissions) -> str:
    entry = {
        "user": user,
        "password": password,
        "permissions": {
            "publish": {"allow": list(perms.publish)},
            "subscribe": {"allow": list(perms.subscribe)},
        },
    }
    return json.dumps(entry, indent=2).replace("\n", "\n    ")


def render(
    passwords: Mapping[str, str],
    *,
    hashed: bool = True,
    listen: str | None = None,
    store_dir: str | None = None,
    tls: Tls | None = None,
    rounds: int = BCRYPT_ROUNDS,
) -> str:
    """A nats-server config: one user per entry of the permission table, nothing for anyone else.

    `listen` and `store_dir` make it a whole server config (compose, Kubernetes); without them it
    is the authorization part, with the address and JetStream given on the command line."""
    lines = [
        "# Rendered by `aigw-dev nats-config` from aigw_runtime.natsauth.PERMISSIONS: do not edit, re-render.",
    ]
    if listen:
        lines.append(f"listen: {json.dumps(listen)}")
    if store_dir:
        lines.append(f"jetstream {{ store_dir: {json.dumps(store_dir)} }}")
    if tls is not None:
        lines += [
            "tls {",
            f"  cert_file: {json.dumps(tls.cert_file)}",
            f"  key_file: {json.dumps(tls.key_file)}",
            "}",
        ]
    users = []
    for user in USERS:
        password = passwords[user]
        users.append(
            "    "
            + _user_block(user, hash_password(password, rounds) if hashed else password, PERMISSIONS[user])
        )
    lines += ["authorization {", "  users = [", ",\n".join(users), "  ]", "}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class DeployFiles:
    config: Path
    passwords: Path
    env_files: dict[str, Path]
    urls: dict[str, str]  # redacted, for display


def deploy_files(
    out: Path,
    *,
    host: str,
    port: int = 4222,
    listen: str = "0.0.0.0:4222",
    store_dir: str = "/data",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    rounds: int = BCRYPT_ROUNDS,
) -> DeployFiles:
    """What a deployment needs: nats-server's whole config (bcrypt hashes) and, per user, an env
    file with its `AIGW_NATS_URL` (`tls://` once the server has a certificate)."""
    passwords = load_passwords(out / "passwords.json")
    tls = Tls(tls_cert, tls_key) if tls_cert and tls_key else None
    config = out / "nats.conf"
    # Readable by the server's container whatever user it runs as: it holds bcrypt hashes of
    # 256-bit random passwords, nothing a client could connect with.
    write_private(config, render(passwords, listen=listen, store_dir=store_dir, tls=tls, rounds=rounds))
    config.chmod(0o644)
    scheme = "tls" if tls else "nats"
    env_files: dict[str, Path] = {}
    urls: dict[str, str] = {}
    for user in USERS:
        url = url_for(user, passwords[user], host, port, scheme)
        env_files[user] = out / f"{user}.env"
        write_private(env_files[user], f"AIGW_NATS_URL={url}\n")
        urls[user] = redact_url(url)
    return DeployFiles(config, out / "passwords.json", env_files, urls)
