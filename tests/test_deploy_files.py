"""Deployment files stay in step with the code: every command they run is a console script we ship."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from aigw_runtime.natsauth import SERVICE_USERS

ROOT = Path(__file__).resolve().parent.parent


def _scripts() -> set[str]:
    names: set[str] = set()
    for pyproject in ROOT.glob("*/*/pyproject.toml"):
        names |= set(tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {}))
    return names


def test_compose_services_run_shipped_console_scripts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = [
        svc["command"][0] for svc in compose["services"].values() if svc.get("image") == "aigw:latest"
    ]
    assert commands and set(commands) <= _scripts()


def test_k8s_manifests_parse_and_run_shipped_console_scripts() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    commands = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((ROOT / "deploy/k8s" / name).read_text()):
            if doc["kind"] == "Deployment":
                commands += [c["command"][0] for c in doc["spec"]["template"]["spec"]["containers"]]
    assert len(commands) >= 4 and set(commands) <= _scripts()


def test_compose_keeps_the_bus_private_and_authenticated() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    nats = services["nats"]
    # No port of NATS on the host: only the containers on the compose network reach it.
    published = [str(p) for svc in services.values() for p in svc.get("ports", [])]
    assert "ports" not in nats and not any("4222" in p or "8222" in p for p in published)
    # The server runs the config `aigw-dev nats-config --out deploy/nats` renders (users, permissions).
    assert nats["command"][:2] == ["-c", "/etc/nats/nats.conf"]
    assert "./deploy/nats/nats.conf:/etc/nats/nats.conf:ro" in nats["volumes"]


def test_every_compose_service_connects_as_its_own_nats_user() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    aigw = {name: svc for name, svc in compose["services"].items() if svc.get("image") == "aigw:latest"}
    assert set(aigw) == set(SERVICE_USERS)  # every service that talks to the bus, and no other
    for name, svc in aigw.items():
        assert svc["env_file"] == [f"deploy/nats/{SERVICE_USERS[name]}.env"], name
        assert "AIGW_NATS_URL" not in svc.get("environment", {}), name  # never a shared, open URL


def test_every_k8s_service_connects_as_its_own_nats_user() -> None:
    base = ROOT / "deploy/k8s"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    generated = {s["name"]: s for s in kustomization["secretGenerator"]}
    literals = kustomization["configMapGenerator"][0]["literals"]
    assert not any(lit.startswith("AIGW_NATS_URL") for lit in literals)
    deployments = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((base / name).read_text()):
            if doc["kind"] == "Deployment":
                deployments[doc["metadata"]["name"]] = doc
            if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "nats":
                spec = doc["spec"]["template"]["spec"]
                assert spec["containers"][0]["args"] == ["-c", "/etc/nats/nats.conf"]
                assert {"name": "config", "secret": {"secretName": "nats-config"}} in spec["volumes"]
    assert generated["nats-config"]["files"] == ["nats.conf=nats/nats.conf"]
    assert set(deployments) == set(SERVICE_USERS)
    for name, doc in deployments.items():
        user = SERVICE_USERS[name]
        assert generated[f"aigw-nats-{user}"]["envs"] == [f"nats/{user}.env"]
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        refs = [src["secretRef"]["name"] for src in container["envFrom"] if "secretRef" in src]
        assert f"aigw-nats-{user}" in refs, name
        assert doc["spec"]["template"]["metadata"]["labels"]["aigw.dev/nats-client"] == "true"
