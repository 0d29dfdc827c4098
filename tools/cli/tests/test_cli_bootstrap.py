import asyncio
import json

import nats
import pytest

from aigw_cli.__main__ import main
from aigw_contracts import ApiKey
from aigw_contracts.keys import hash_secret
from aigw_devstack import NatsServer
from aigw_runtime.configstore import ConfigWatcher


async def _stored_keys(url: str) -> list[ApiKey]:
    nc = await nats.connect(url)
    try:
        return list((await ConfigWatcher(nc.jetstream()).start()).keys.values())
    finally:
        await nc.close()


def test_bootstrap_stores_only_the_hash_of_a_new_operator_key(
    fresh_nats: NatsServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AIGW_KEY_PEPPER", "pep")
    main(["--json", "bootstrap", "--nats-url", fresh_nats.url])
    secret = json.loads(capsys.readouterr().out)["secret"]
    (key,) = asyncio.run(_stored_keys(fresh_nats.url))
    assert key.operator and key.admin and key.tenant == "operator"
    assert key.hash == hash_secret(secret, "pep") and secret not in key.model_dump_json()


def test_bootstrap_without_the_pepper_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AIGW_KEY_PEPPER", raising=False)
    with pytest.raises(SystemExit):
        main(["bootstrap", "--nats-url", "nats://127.0.0.1:1"])
    assert "AIGW_KEY_PEPPER" in capsys.readouterr().err
