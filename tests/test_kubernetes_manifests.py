"""deploy/kubernetes/ validates against the Kubernetes API schemas (kubernetes-validate, which
bundles them offline), and its parts fit each other, the image and the service's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support.dockerfile import parse
from support.live_server import settings_from_env

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes release the manifests promise to work on, and the newest schemas known.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def _documents() -> list[dict[str, Any]]:
    return [
        document
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document
    ]


def _one(kind: str) -> dict[str, Any]:
    (found,) = [document for document in _documents() if document["kind"] == kind]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        # strict: an unknown (e.g. misspelt) field is an error, not silently dropped.
        kubernetes_validate.validate(document, version, strict=True)


def test_every_kind_an_admin_needs_is_there() -> None:
    kinds = sorted(document["kind"] for document in _documents())
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "PodDisruptionBudget",
            "Secret",
            "Service",
        ]
    )


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def test_replicas_probe_the_health_endpoints_and_run_locked_down() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The image's command, as the Dockerfile's final stage runs it.
    assert container["command"] == parse(ROOT / "Dockerfile")[-1].cmd


def test_shutdown_fits_in_the_grace_period() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pause = int(_container(deployment)["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = int(_one("ConfigMap")["data"]["RPL_CDS_SHUTDOWN_GRACE_SECONDS"])
    assert pause + grace < pod["terminationGracePeriodSeconds"]


def test_migrations_run_once_in_the_job_not_in_every_replica() -> None:
    assert _one("ConfigMap")["data"]["RPL_CDS_AUTO_MIGRATE"] == "false"
    job = _one("Job")
    assert _container(job)["command"] == ["rpl-cds", "migrate"]
    assert "RPL_CDS_AUTO_MIGRATE" not in {e["name"] for e in _container(job).get("env", [])}


def test_service_budget_and_autoscaler_point_at_the_replicas() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        _one("Service")["spec"]["selector"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = _one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_the_settings_are_ones_the_service_accepts() -> None:
    secret = _one("Secret")["stringData"]
    from_secret = {
        entry["name"]: secret[entry["valueFrom"]["secretKeyRef"]["key"]]
        for entry in _container(_one("Deployment"))["env"]
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    env = {**_one("ConfigMap")["data"], **from_secret}
    unknown = [name for name in env if not name.startswith("RPL_CDS_")]
    assert not unknown
    settings = settings_from_env(env)
    assert settings.auth_enabled
    assert settings.suppression_active
    assert not settings.auto_migrate
    assert settings.resolved_database_url.startswith("postgresql+asyncpg://")
    # The issuer's key file is the one the Deployment mounts from the Secret.
    (issuer,) = settings.auth_issuers.values()
    mounts = {m["name"]: m["mountPath"] for m in _container(_one("Deployment"))["volumeMounts"]}
    assert issuer.jwks_file == Path(mounts["issuer-keys"]) / "ehr.jwks.json"
    assert "ehr.jwks.json" in secret
