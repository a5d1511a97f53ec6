"""docker-compose.yml and the CPU override, as a real compose implementation reads them:
Debian's docker-compose 1.29 parses, validates and merges them with `config` (no engine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
APP_SERVICES = ("migrate", "api", "worker")
SETTINGS = {f"LORAFORGE_{name.upper()}" for name in Settings.model_fields}


def compose_config(
    tmp_path: Path, *files: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The merged, interpolated configuration; fails (never skips) without docker-compose."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is missing: `apt-get install docker-compose` (.ci/run does)")
    env_file = tmp_path / "empty.env"  # not the developer's .env: the defaults are under test
    env_file.touch()
    command = [binary, "--env-file", str(env_file), "--project-directory", str(REPO)]
    for file in files:
        command += ["-f", str(file)]
    ran = subprocess.run(
        [*command, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )
    assert ran.returncode == 0, ran.stderr
    config: dict[str, Any] = yaml.safe_load(ran.stdout)
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"), COMPOSE_FILE)["services"]


@pytest.fixture(scope="module")
def cpu_stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"), COMPOSE_FILE, CPU_OVERRIDE)[
        "services"
    ]


def dockerfile_stages() -> set[str]:
    text = (REPO / "Dockerfile").read_text()
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE))


def test_the_stack_has_its_services_and_optional_ones_behind_profiles(stack: dict[str, Any]):
    assert set(stack) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker",
        "flower",
        "minio",
        "minio-bucket",
        "vllm",
        "prometheus",
    }
    for name in ("postgres", "redis", *APP_SERVICES):
        assert "profiles" not in stack[name], name
    assert stack["flower"]["profiles"] == ["flower"]
    assert stack["minio"]["profiles"] == stack["minio-bucket"]["profiles"] == ["s3"]
    assert stack["vllm"]["profiles"] == ["inference"]
    assert stack["prometheus"]["profiles"] == ["monitoring"]


def test_the_monitoring_profile_scrapes_the_api_and_every_worker_s_metrics_port(
    stack: dict[str, Any], cpu_stack: dict[str, Any]
):
    (mount,) = [v for v in stack["prometheus"]["volumes"] if v.endswith("prometheus.yml:ro")]
    config = yaml.safe_load((REPO / mount.split(":")[0]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (api_target,) = jobs["loraforge-api"]["static_configs"][0]["targets"]
    assert api_target == f"api:{stack['api']['ports'][0]['target']}"
    (workers,) = jobs["loraforge-worker"]["dns_sd_configs"]
    assert set(workers["names"]) == {"worker", "worker-cpu"}
    for services, name in ((stack, "worker"), (cpu_stack, "worker-cpu")):
        environment = services[name]["environment"]
        port = environment["LORAFORGE_WORKER_METRICS_PORT"]
        settings = Settings(_env_file=None, worker_metrics_port=port)  # type: ignore[call-arg]
        assert settings.worker_metrics_port == workers["port"], name


def test_the_inference_profile_serves_adapters_from_the_api_s_data_dir(tmp_path: Path):
    backends = '{"qwen2.5-0.5b-instruct": "http://vllm:8000"}'
    env = {"LORAFORGE_INFERENCE_BACKENDS": backends}
    services = compose_config(tmp_path, COMPOSE_FILE, env=env)["services"]
    vllm, api = services["vllm"], services["api"]
    assert "--enable-lora" in vllm["command"]
    assert "--served-model-name=qwen2.5-0.5b-instruct" in vllm["command"]
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # The API sends an adapter's path on the artifacts volume: vLLM must see it there too.
    assert f"artifacts:{api['environment']['LORAFORGE_DATA_DIR']}:ro" in vllm["volumes"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert api["environment"]["LORAFORGE_INFERENCE_BACKENDS"] == backends


def test_the_worker_reserves_an_nvidia_gpu(stack: dict[str, Any]):
    (device,) = stack["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert device.get("count") or device.get("device_ids")


def test_services_start_in_order_once_their_dependencies_are_ready(stack: dict[str, Any]):
    assert stack["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert stack[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
        }, name
    for name in ("postgres", "redis", "api"):
        assert stack[name]["healthcheck"]["test"], name
    assert stack["migrate"]["command"] == ["loraforge", "migrate"]
    assert stack["migrate"]["restart"] == "no"


def test_images_build_from_the_dockerfile_targets(stack: dict[str, Any]):
    targets = {name: stack[name]["build"]["target"] for name in APP_SERVICES}
    assert targets == {"migrate": "api", "api": "api", "worker": "worker"}
    assert set(targets.values()) <= dockerfile_stages()
    assert stack["api"]["ports"] == [{"published": 8000, "target": 8000}]
    assert stack["worker"]["command"] == ["loraforge", "worker"]


def test_api_and_workers_share_the_artifact_volume_at_the_data_dir(stack: dict[str, Any]):
    for name in ("api", "worker"):
        data_dir = stack[name]["environment"]["LORAFORGE_DATA_DIR"]
        assert f"artifacts:{data_dir}:rw" in stack[name]["volumes"], name
    assert any(v.startswith("postgres-data:") for v in stack["postgres"]["volumes"])


def test_app_services_are_configured_only_through_loraforge_settings(
    stack: dict[str, Any], cpu_stack: dict[str, Any]
):
    for services in (stack, cpu_stack):
        for name, service in services.items():
            variables = set(service.get("environment") or {})
            loraforge = {v for v in variables if v.startswith("LORAFORGE_")}
            assert loraforge <= SETTINGS, (name, loraforge - SETTINGS)
            if name in (*APP_SERVICES, "worker-cpu"):
                assert variables == loraforge, name


def test_every_loraforge_variable_named_in_the_compose_files_is_a_setting():
    for file in (COMPOSE_FILE, CPU_OVERRIDE):
        named = set(re.findall(r"\bLORAFORGE_[A-Z0-9_]+", file.read_text()))
        assert named, file
        assert named <= SETTINGS, (file.name, named - SETTINGS)


def test_the_default_environment_is_valid_settings(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    for name in APP_SERVICES:
        for variable in SETTINGS:
            monkeypatch.delenv(variable, raising=False)
        for variable, value in stack[name]["environment"].items():
            if value is not None:  # unset in the container (passed on only when set)
                monkeypatch.setenv(variable, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.database_url.startswith("postgresql+psycopg://loraforge:")
        assert settings.database_url.endswith("@postgres:5432/loraforge")
        assert settings.broker_url == "redis://redis:6379/0"
        assert settings.storage_backend == "local"
        assert settings.run_migrations_on_start is False


def test_s3_and_json_settings_reach_the_api_and_the_worker(tmp_path: Path):
    env = {
        "LORAFORGE_STORAGE_BACKEND": "s3",
        "LORAFORGE_S3_BUCKET": "artifacts",
        "LORAFORGE_S3_ENDPOINT_URL": "http://minio:9000",
        "LORAFORGE_S3_SECRET_ACCESS_KEY": "s3cret",
        "LORAFORGE_MODELS": '{"llama": {"path": "/models/llama"}}',
        "POSTGRES_PASSWORD": "pw",
    }
    services = compose_config(tmp_path, COMPOSE_FILE, env=env)["services"]
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        for variable, value in env.items():
            if variable.startswith("LORAFORGE_"):
                assert environment[variable] == value, (name, variable)
        assert ":pw@postgres:" in environment["LORAFORGE_DATABASE_URL"]
    assert "store/artifacts" in services["minio-bucket"]["command"][0]


def test_the_cpu_override_swaps_the_gpu_worker_for_a_cpu_one(
    stack: dict[str, Any], cpu_stack: dict[str, Any]
):
    assert cpu_stack["worker"]["profiles"] == ["gpu"]
    cpu = cpu_stack["worker-cpu"]
    assert "profiles" not in cpu
    assert "deploy" not in cpu
    assert cpu["build"]["target"] == "worker-cpu" in dockerfile_stages()
    for key in ("command", "environment", "volumes", "depends_on"):
        assert cpu[key] == stack["worker"][key], key


def duration_s(value: str) -> float:
    """A compose duration such as `60s` or `1m30s`, in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert "".join(number + unit for number, unit in parts) == value, value
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.mark.parametrize("grace", [None, "90"], ids=["default", "set-in-env"])
def test_docker_waits_for_a_workers_stop_as_long_as_the_worker_takes(
    tmp_path: Path, grace: str | None
):
    env = {"LORAFORGE_STOP_GRACE_S": grace} if grace else {}
    services = compose_config(tmp_path, COMPOSE_FILE, CPU_OVERRIDE, env=env)["services"]
    expected = float(grace) if grace else Settings.model_fields["stop_grace_s"].default
    for name in ("worker", "worker-cpu"):
        environment = services[name]["environment"]
        settings = Settings(_env_file=None, stop_grace_s=environment["LORAFORGE_STOP_GRACE_S"])  # type: ignore[call-arg]
        assert settings.stop_grace_s == expected, name
        assert duration_s(services[name]["stop_grace_period"]) == expected, name
