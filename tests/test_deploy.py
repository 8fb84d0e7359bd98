"""The deployment files in deploy/ agree with the code they deploy.

No Docker engine or cluster is needed: every file is parsed, and what it says is checked against the source of
truth — the CLI parser (``streams.cli.build_parser``), the settings model (``streams.settings.Settings``: env names
are derived from its fields and prefix), the topics, the provisioning constants of the dashboards and the rule
catalogue. Where ``kubectl`` is installed, the kustomization is also built.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import SecretStr

from dashboards.provisioning import DASHBOARDS_MOUNT, METRICS_PATH, SCRAPE_JOB
from rules.loader import CATALOG
from streams.cli import build_parser
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

PREFIX = Settings.model_config["env_prefix"]
SETTING_ENV = {PREFIX + name.upper(): name for name in Settings.model_fields}


def _is_secret(name: str) -> bool:
    """``SecretStr`` or ``SecretStr | None``: a value that belongs in a Secret, never in a ConfigMap or a file."""
    ann = Settings.model_fields[name].annotation
    return ann is SecretStr or SecretStr in getattr(ann, "__args__", ())


SECRET_ENV = {env for env, name in SETTING_ENV.items() if _is_secret(name)}
METRICS_PORT = Settings.model_fields["metrics_port"].default
# a dummy for ${VAR:?...} / ${VAR} references, which compose fills from the shell
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}")


# --- loading ---------------------------------------------------------------------------------------------------------


@functools.cache
def load_yaml(path: Path) -> list:
    """The documents of a YAML file (cached: the tests only read them)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")[0]


def k8s(kind: str, path: str | None = None) -> dict:
    files = [K8S / path] if path else sorted(K8S.glob("*.yaml"))
    found = [d for f in files for d in load_yaml(f) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def kustomization() -> dict:
    return load_yaml(K8S / "kustomization.yaml")[0]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, # comments and blank lines skipped (kustomize ``envs`` files)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def interpolate(value: str) -> str:
    """What compose would substitute: the default of ``${VAR:-default}``, or a dummy for a required value."""
    return _INTERPOLATION.sub(lambda m: m.group(2) if m.group(0).startswith(f"${{{m.group(1)}:-") else "x" * 32,
                              str(value))  # fmt: skip


@functools.cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        instr, _, args = (buf + line).strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def instructions(name: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == name]


def rollguard_services() -> dict[str, dict]:
    return {n: s for n, s in compose()["services"].items() if s.get("image", "").split(":")[0] == "rollguard"}


def worker_services() -> dict[str, dict]:
    return {n: s for n, s in rollguard_services().items() if s["command"][0] == "worker"}


def entrypoint() -> list[str]:
    return json.loads(instructions("ENTRYPOINT")[-1])


def deployment_container() -> dict:
    return k8s("Deployment", "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for key in list(SETTING_ENV):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


# --- every file parses -----------------------------------------------------------------------------------------------

YAML_FILES = sorted(p.relative_to(ROOT).as_posix() for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


@pytest.mark.parametrize("path", YAML_FILES)
def test_yaml_file_parses(path: str) -> None:
    assert load_yaml(ROOT / path), f"{path} is empty"


def test_deploy_has_the_files_the_docs_name() -> None:
    for name in ("Dockerfile", "Dockerfile.dockerignore", "compose.yaml", "constraints.txt", "k8s/kustomization.yaml",
                 "prometheus/prometheus.compose.yml"):  # fmt: skip
        assert (DEPLOY / name).is_file(), name
    assert (ROOT / "docs" / "deploy.md").is_file()


# --- settings: every ROLLGUARD_* name in deploy/ is a field of the settings model ------------------------------------


def env_names_used() -> dict[str, set[str]]:
    """ROLLGUARD_* names in every deploy file (excluding this check's own derivations), by file."""
    used: dict[str, set[str]] = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".txt"):
            names = set(re.findall(rf"\b{PREFIX}[A-Z0-9_]+\b", path.read_text()))
            if names:
                used[path.relative_to(ROOT).as_posix()] = names
    return used


@pytest.mark.parametrize("path", sorted(env_names_used()))
def test_every_env_name_in_deploy_is_a_setting(path: str) -> None:
    unknown = env_names_used()[path] - set(SETTING_ENV)
    assert not unknown, f"{path} uses {sorted(unknown)}, which streams.settings.Settings does not read"


def test_compose_worker_environment_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in worker_services().items():
        env = {k: interpolate(v) for k, v in svc["environment"].items()}
        s = settings_from_env(monkeypatch, env)
        assert s.kafka_bootstrap and s.redis_url, name
        assert s.metrics_port == METRICS_PORT


def test_k8s_settings_configmap_validates_and_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_file(K8S / "settings.env")
    assert set(env) <= set(SETTING_ENV), sorted(set(env) - set(SETTING_ENV))
    assert not set(env) & SECRET_ENV, f"secrets belong in the Secret, not the ConfigMap: {set(env) & SECRET_ENV}"
    s = settings_from_env(monkeypatch, env)
    assert s.metrics_port == METRICS_PORT


def test_k8s_settings_with_the_secret_pass_the_production_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.security import production_problems

    env = env_file(K8S / "settings.env")
    # id:secret, which every secret accepts and operator keys require
    secret = {k: f"k1:value-of-{k.lower()}" for k in k8s("Secret", "secret.example.yaml")["stringData"]}
    s = settings_from_env(monkeypatch, {**env, **secret})
    assert s.profile == "production" and production_problems(s) == []


def test_k8s_secret_template_holds_only_secret_settings() -> None:
    secret = k8s("Secret", "secret.example.yaml")
    keys = set(secret["stringData"])
    assert keys <= SECRET_ENV, f"not SecretStr settings: {sorted(keys - SECRET_ENV)}"
    assert f"{PREFIX}USER_KEY" in keys
    assert "secret.example.yaml" not in kustomization()["resources"], "a template must never be applied"


# --- Dockerfile ------------------------------------------------------------------------------------------------------


def test_dockerfile_base_image_is_pinned() -> None:
    args = dict(a.split("=", 1) for a in instructions("ARG") if "=" in a)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    stages = set()
    for line in instructions("FROM"):
        ref, *rest = line.split()
        assert ref == "${PYTHON_IMAGE}" or ref in stages, f"FROM {ref}: not the pinned base image"
        if rest:
            stages.add(rest[-1])


def test_dockerfile_runs_as_a_non_root_user() -> None:
    user = instructions("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, f"USER {user}: numeric, non-root (runAsNonRoot can verify it)"


def test_dockerfile_entrypoint_is_the_cli_and_cmd_parses() -> None:
    assert entrypoint() == ["rollguard"]
    assert PYPROJECT["project"]["scripts"]["rollguard"] == "streams.cli:main"
    args = build_parser().parse_args(json.loads(instructions("CMD")[-1]))
    assert args.command == "worker"


def test_dockerfile_exposes_the_metrics_port_and_checks_healthz() -> None:
    assert instructions("EXPOSE") == [str(METRICS_PORT)]
    env = " ".join(instructions("ENV"))
    assert f"{PREFIX}METRICS_PORT={METRICS_PORT}" in env
    check = instructions("HEALTHCHECK")[-1]
    assert "/healthz" in check and str(METRICS_PORT) in check and "curl" not in check


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes; ``**/x`` matches x at any depth."""
    out = False
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        hit = any(fnmatch(pre, p) or (p.startswith("**/") and fnmatch(PurePosixPath(pre).name, p[3:]))
                  for pre in prefixes)  # fmt: skip
        if hit:
            out = not neg
    return out


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]  # fmt: skip
    copied = [c for a in instructions("COPY") if not a.startswith("--from") for c in a.split()[:-1]]
    assert copied, "no COPY from the context"
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not _ignored(src, patterns), f"COPY {src}: excluded by Dockerfile.dockerignore"
    packages = {p.split(".")[0] for p in PYPROJECT["tool"]["setuptools"]["packages"]}
    assert packages <= set(copied), f"packages the wheel needs but the image build does not copy: {packages - set(copied)}"
    for leak in (".venv/bin/python", ".git/config", "tests/conftest.py", "bench/data/x.jsonl", "deploy/.env"):
        assert _ignored(leak, patterns), f"{leak} would be sent to the build context"


def test_constraints_pin_every_dependency_within_pyproject() -> None:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt (deploy/lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} violates {dep}"


# --- compose ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", sorted(compose()["services"]))
def test_compose_image_is_pinned(service: str) -> None:
    image = compose()["services"][service]["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{service}: {image} is not pinned"


def test_compose_builds_the_project_version() -> None:
    for name, svc in worker_services().items():
        assert svc["image"] == f"rollguard:{VERSION}", name
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile" and (DEPLOY / svc["build"]["context"]).resolve() == ROOT


def test_compose_redis_is_durable_and_never_evicts() -> None:
    cmd = compose()["services"]["redis"]["command"]
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert cmd[0] == "redis-server"
    assert opts["--appendonly"] == "yes"
    assert opts["--appendfsync"] in ("always", "everysec")
    assert opts["--maxmemory-policy"] == "noeviction"


def test_compose_runs_two_workers_in_one_consumer_group() -> None:
    workers = worker_services()
    assert sorted(workers) == ["worker-1", "worker-2"]
    app_ids = {svc["environment"][f"{PREFIX}APP_ID"] for svc in workers.values()}
    assert len(app_ids) == 1


@pytest.mark.parametrize("service", ["worker-1", "worker-2"])
def test_compose_worker_command_is_a_valid_cli_invocation(service: str) -> None:
    svc = compose()["services"][service]
    argv = svc.get("entrypoint", entrypoint())[1:] + svc["command"]
    args = build_parser().parse_args(argv)
    assert args.command == "worker"


def test_compose_workers_mount_the_rules_they_are_told_to_read() -> None:
    for name, svc in worker_services().items():
        rules = svc["environment"][f"{PREFIX}RULES"]
        mounts = {target: source for source, target, *_ in (v.split(":") for v in svc["volumes"])}
        assert (DEPLOY / mounts[rules]).resolve() == CATALOG, name
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"], name
        port = svc["environment"][f"{PREFIX}METRICS_PORT"]
        assert f":{port}/healthz" in " ".join(svc["healthcheck"]["test"]), name


def test_compose_depends_on_healthy_services_have_healthchecks() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"


def test_compose_kafka_is_kraft_with_reachable_listeners() -> None:
    env = compose()["services"]["kafka"]["environment"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
    advertised = dict(a.split("://") for a in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    bootstrap = {svc["environment"][f"{PREFIX}KAFKA_BOOTSTRAP"] for svc in worker_services().values()}
    assert bootstrap == {advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_compose_prometheus_scrapes_both_workers() -> None:
    prom = compose()["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    mount = next(v.split(":") for v in prom["volumes"] if config.startswith(v.split(":")[1] + "/"))
    cfg = load_yaml((DEPLOY / mount[0] / PurePosixPath(config).relative_to(mount[1])).resolve())[0]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == SCRAPE_JOB]
    assert job["metrics_path"] == METRICS_PATH
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    want = {f"{name}:{svc['environment'][f'{PREFIX}METRICS_PORT']}" for name, svc in worker_services().items()}
    assert targets == want


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_compose_prometheus_config_passes_promtool() -> None:
    res = subprocess.run(["promtool", "check", "config", "prometheus.compose.yml"], cwd=DEPLOY / "prometheus",
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_grafana_mounts_provisioning_and_dashboards() -> None:
    mounts = dict(v.split(":")[1::-1] for v in compose()["services"]["grafana"]["volumes"])
    assert (DEPLOY / mounts["/etc/grafana/provisioning"] / "datasources").is_dir()
    assert (DEPLOY / mounts[DASHBOARDS_MOUNT]).resolve() == ROOT / "dashboards"


# --- Kubernetes ------------------------------------------------------------------------------------------------------


def test_kustomization_resources_exist() -> None:
    for res in kustomization()["resources"]:
        assert (K8S / res).is_file(), res


def test_kustomization_rules_configmap_is_the_whole_catalogue() -> None:
    gens = {g["name"]: g for g in kustomization()["configMapGenerator"]}
    files = {(K8S / f.split("=")[-1]).resolve() for f in gens["rollguard-rules"]["files"]}
    assert files == set(CATALOG.glob("*.yaml")) | set(CATALOG.glob("*.yml"))


def test_deployment_image_is_the_kustomized_project_version() -> None:
    (img,) = kustomization()["images"]
    assert deployment_container()["image"].split(":")[0] == img["name"] == "rollguard"
    assert img["newTag"] == VERSION


def test_deployment_args_are_a_valid_cli_invocation() -> None:
    c = deployment_container()
    argv = c.get("command", entrypoint())[1:] + c["args"]
    assert build_parser().parse_args(argv).command == "worker"


@pytest.mark.parametrize(("probe", "path"), [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                                             ("readinessProbe", "/ready")])  # fmt: skip
def test_deployment_probes_hit_the_metrics_port(probe: str, path: str) -> None:
    c = deployment_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    get = c[probe]["httpGet"]
    assert get["path"] == path
    assert ports.get(get["port"], get["port"]) == METRICS_PORT
    assert env_file(K8S / "settings.env")[f"{PREFIX}METRICS_PORT"] == str(METRICS_PORT)


def test_deployment_has_resources_and_runs_locked_down() -> None:
    spec = k8s("Deployment", "deployment.yaml")["spec"]
    pod, c = spec["template"]["spec"], deployment_container()
    assert spec["replicas"] >= 2
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    assert c["resources"]["limits"]["memory"] == c["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == instructions("USER")[-1].split(":")[0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_deployment_reads_the_generated_configmaps_and_the_secret() -> None:
    c = deployment_container()
    gens = {g["name"] for g in kustomization()["configMapGenerator"]}
    refs = {next(iter(e)): e[next(iter(e))]["name"] for e in c["envFrom"]}
    assert refs["configMapRef"] in gens
    assert refs["secretRef"] == k8s("Secret", "secret.example.yaml")["metadata"]["name"]
    rules_dir = env_file(K8S / "settings.env")[f"{PREFIX}RULES"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == rules_dir)
    volume = next(v for v in k8s("Deployment", "deployment.yaml")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "rollguard-rules" and "rollguard-rules" in gens


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_the_worker_pods() -> None:
    dep = k8s("Deployment", "deployment.yaml")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert _matches(dep["spec"]["selector"]["matchLabels"], pod_labels)
    pdb = k8s("PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert 1 <= pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    for tsc in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert _matches(tsc["labelSelector"]["matchLabels"], pod_labels)
    svc = k8s("Service")
    assert _matches(svc["spec"]["selector"], pod_labels)


def test_service_monitor_scrapes_the_metrics_service_as_the_rollguard_job() -> None:
    svc, sm = k8s("Service"), k8s("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert _matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == SCRAPE_JOB
    container_ports = {p["name"] for p in deployment_container()["ports"]}
    (port,) = svc["spec"]["ports"]
    assert port["port"] == METRICS_PORT and port["targetPort"] in container_ports
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == port["name"] and ep["path"] == METRICS_PATH
    assert svc["spec"]["publishNotReadyAddresses"] is True  # a degraded (not Ready) worker is still scraped


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomization_builds() -> None:
    out = subprocess.run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ConfigMap", "ConfigMap", "Service", "Deployment",
                            "PodDisruptionBudget", "ServiceMonitor", "Deployment", "PodMonitor"])  # fmt: skip
    assert all(d["metadata"].get("namespace") == "rollguard" for d in docs if d["kind"] != "Namespace")
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rollguard-worker")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"registry.example.com/rollguard:{VERSION}"
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    assert {e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e} <= names
    rules = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("rollguard-rules"))
    assert sorted(rules["data"]) == sorted(p.name for p in CATALOG.glob("*.yaml"))


# --- the pager (compose service, Kubernetes Deployment, Alertmanager) ----------------------------------------------


def test_compose_runs_one_pager_that_reaches_alertmanager(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.pager import pager_problems

    services = compose()["services"]
    assert sorted(set(rollguard_services()) - set(worker_services())) == ["pager"]
    pager = services["pager"]
    argv = pager.get("entrypoint", entrypoint())[1:] + pager["command"]
    assert build_parser().parse_args(argv).command == "pager"
    s = settings_from_env(monkeypatch, {k: interpolate(v) for k, v in pager["environment"].items()})
    assert pager_problems(s) == [] and s.pager_target == "alertmanager"
    # the same broker and consumer-group prefix as the workers
    workers = worker_services().values()
    assert {s.kafka_bootstrap} == {w["environment"][f"{PREFIX}KAFKA_BOOTSTRAP"] for w in workers}
    assert {s.app_id} == {w["environment"][f"{PREFIX}APP_ID"] for w in workers}
    # its URL names the alertmanager service, whose config is the example checked by amtool (tests/test_pager.py)
    am = services["alertmanager"]
    assert s.pager_url == "http://alertmanager:9093" and "alertmanager" in pager["depends_on"]
    mounts = {target: source for source, target, *_ in (v.split(":") for v in am["volumes"])}
    config = next(a.split("=", 1)[1] for a in am["command"] if a.startswith("--config.file="))
    assert (DEPLOY / mounts[str(PurePosixPath(config).parent)] / PurePosixPath(config).name).resolve() == (
        DEPLOY / "alertmanager" / "alertmanager.yml")
    assert "--cluster.listen-address=" in am["command"]
    assert f":{s.pager_metrics_port}/healthz" in " ".join(pager["healthcheck"]["test"])
    assert pager["read_only"] is True and pager["cap_drop"] == ["ALL"]


def test_compose_prometheus_scrapes_the_pager() -> None:
    cfg = load_yaml(DEPLOY / "prometheus" / "prometheus.compose.yml")[0]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "rollguard-pager"]
    port = compose()["services"]["pager"]["environment"][f"{PREFIX}PAGER_METRICS_PORT"]
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == [f"pager:{port}"]


def test_k8s_pager_deployment_runs_the_pager_locked_down_with_its_own_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.pager import pager_problems

    dep = k8s("Deployment", "pager.yaml")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert build_parser().parse_args(c.get("command", entrypoint())[1:] + c["args"]).command == "pager"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert _matches(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    # not selected by the workers' Service, PDB or ServiceMonitor
    assert not _matches(k8s("Service")["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    refs = [next(iter(e.items())) for e in c["envFrom"]]
    assert refs == [("configMapRef", {"name": "rollguard-settings"}), ("secretRef", {"name": "rollguard-pager"})]
    secret = k8s("Secret", "pager-secret.example.yaml")
    assert secret["metadata"]["name"] == "rollguard-pager" and set(secret["stringData"]) <= SECRET_ENV
    assert "pager-secret.example.yaml" not in kustomization()["resources"]
    env = {**env_file(K8S / "settings.env"), **{e["name"]: e["value"] for e in c["env"]},
           **{k: f"value-of-{k.lower()}" for k in secret["stringData"]}}  # fmt: skip
    s = settings_from_env(monkeypatch, env)
    assert s.profile == "production" and pager_problems(s) == []
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == s.pager_metrics_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == [
        "ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    pm = k8s("PodMonitor", "pager.yaml")
    assert _matches(pm["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


# --- docs ------------------------------------------------------------------------------------------------------------


def test_docs_commands_match_the_files() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "docker build -f deploy/Dockerfile" in doc
    assert "docker compose -f deploy/compose.yaml up" in doc
    assert "--load-restrictor LoadRestrictionsNone deploy/k8s" in doc
    code = "\n".join(re.findall(r"^ *```[a-z]*\n(.*?)^ *```", doc, re.M | re.S))
    # `rollguard ARGS` as typed, after `./dev`, `exec SERVICE` or `kubectl … --`; `compose run --rm SERVICE ARGS`
    # gets its `rollguard` from the image's entrypoint
    shown = re.findall(r"(?:^|\./dev |exec \S+ |-- )rollguard ([a-z].*)$", code, re.M)
    shown += re.findall(r"compose .* run --rm \S+ ([a-z].*)$", code, re.M)
    assert len(shown) >= 5, f"docs/deploy.md shows {len(shown)} rollguard commands"
    for args in shown:  # every rollguard command the page shows parses
        build_parser().parse_args(shlex.split(args.split(" #")[0]))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_the_dead_letter_rate_alert_passes_its_promtool_unit_tests() -> None:
    for cfg in ("prometheus.yml", "prometheus.compose.yml"):
        assert "rules/*.yml" in load_yaml(DEPLOY / "prometheus" / cfg)[0]["rule_files"]
    res = subprocess.run(["promtool", "test", "rules", "rollguard-alerts.test.yml"], cwd=DEPLOY / "prometheus",
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
