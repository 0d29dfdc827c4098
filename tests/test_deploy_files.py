"""Deployment files stay in step with the code: every command they run is a console script we ship."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

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
