"""`aigw-dev nats-config`: the files a deployment's bus needs, checked by running nats-server on them."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import stat
from pathlib import Path

import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aigw_devstack.__main__ import main
from aigw_devstack.nats import nats_server_binary
from aigw_devstack.procs import Process, free_port, port_open
from aigw_runtime import natsauth
from aigw_runtime.bus import Bus


def _env_url(path: Path) -> str:
    (line,) = path.read_text().splitlines()
    key, _, url = line.partition("=")
    assert key == "AIGW_NATS_URL"
    return url


def test_rendered_config_runs_nats_with_bcrypt_users_and_each_env_file_logs_in(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "nats"
    argv = ["nats-config", "--out", str(out), "--host", "127.0.0.1", "--port", str(port)]
    main([*argv, "--listen", f"127.0.0.1:{port}", "--store-dir", str(tmp_path / "js")])

    conf = (out / "nats.conf").read_text()
    passwords = (out / "passwords.json").read_text()
    assert conf.count('"password": "$2a$') == len(natsauth.USERS)  # hashes only, no password
    for user in natsauth.USERS:
        assert stat.S_IMODE((out / f"{user}.env").stat().st_mode) == 0o600
        assert _env_url(out / f"{user}.env").split("@")[0].split(":")[-1] in passwords
        assert _env_url(out / f"{user}.env").split("@")[0].split(":")[-1] not in conf
    assert stat.S_IMODE((out / "passwords.json").stat().st_mode) == 0o600

    # Re-rendering (here: with TLS) keeps every service's credentials.
    before = {user: _env_url(out / f"{user}.env") for user in natsauth.USERS}
    main([*argv, "--tls-cert", "/certs/server.pem", "--tls-key", "/certs/server-key.pem"])
    assert "tls {" in (out / "nats.conf").read_text()
    assert {u: _env_url(out / f"{u}.env") for u in natsauth.USERS} == {
        u: url.replace("nats://", "tls://") for u, url in before.items()
    }
    main([*argv, "--listen", f"127.0.0.1:{port}", "--store-dir", str(tmp_path / "js")])  # back, no TLS

    server = Process(
        "nats-server", [nats_server_binary(), "-c", str(out / "nats.conf")], tmp_path / "nats.log"
    )
    server.start().wait_ready(lambda: port_open("127.0.0.1", port), 15)
    try:

        async def logins() -> None:
            for user in natsauth.USERS:
                url = _env_url(out / f"{user}.env")
                nc = await nats.connect(
                    url, inbox_prefix=natsauth.inbox_prefix_of(url), allow_reconnect=False
                )
                assert nc.is_connected
                await nc.close()
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats.connect(
                    f"nats://127.0.0.1:{port}", allow_reconnect=False, max_reconnect_attempts=0
                )

        asyncio.run(logins())
    finally:
        server.stop()


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = dt.datetime.now(dt.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aigw test CA")])
    ca = cert("aigw test CA", ca_key, ca_name, ca_key, ca=True)
    server = cert("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_with_a_certificate_services_connect_over_tls_to_the_server_they_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    out = tmp_path / "nats"
    main(
        [
            *("nats-config", "--out", str(out), "--host", "127.0.0.1", "--port", str(port)),
            *("--listen", f"127.0.0.1:{port}", "--store-dir", str(tmp_path / "js")),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
        ]
    )
    url = _env_url(out / "router.env")
    assert url.startswith("tls://router:")
    server = Process(
        "nats-server", [nats_server_binary(), "-c", str(out / "nats.conf")], tmp_path / "nats.log"
    )
    server.start().wait_ready(lambda: port_open("127.0.0.1", port), 15)
    try:

        async def with_bus() -> bool:
            bus = Bus(url, "aigw-router-test")  # what every service connects with
            try:
                await bus.connect(attempts=1)
                return bus.connected
            finally:
                await bus.close()

        async def plain_client() -> None:
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)

        # The services' way: the URL from the env file, the private CA trusted through SSL_CERT_FILE.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        assert asyncio.run(with_bus())
        # A client that does not trust the server's CA does not get through.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            asyncio.run(plain_client())
    finally:
        server.stop()
