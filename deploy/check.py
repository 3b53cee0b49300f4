"""Checks the Kubernetes manifests: renders the base and every overlay with `kubectl kustomize`,
validates every built-in object against the Kubernetes API schemas (kubernetes-validate, offline,
strict: unknown fields are errors), and every custom resource (KEDA, Prometheus Operator,
cert-manager, External Secrets) against the schema of its fields kept in deploy/k8s/schemas. An
object of a kind with neither is an error. Then the durability decisions: the overlays that run
on the JetStream cluster of three (staging, prod) give every stream 3 replicas, and the
production NATS servers (the chart's values, the compose production overrides) fsync every write
before acknowledging it (`sync_interval: always`). Run by .ci/run; exits non-zero naming each
problem.
"""

import json
import pathlib
import re
import subprocess
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES = "1.31.0"
DEPLOY = pathlib.Path(__file__).resolve().parent
ROOT = DEPLOY / "k8s"
TARGETS = [ROOT / "base"] + sorted((ROOT / "overlays").iterdir())
# The overlays whose NATS is the chart's JetStream cluster of three, and the replicas they need.
CLUSTERED = {"overlays/staging": 3, "overlays/prod": 3}


def schemas():
    found = {}
    for path in (ROOT / "schemas").glob("*.json"):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        found[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return found


def replicas_of(name, objects):
    """Problems with `nats.replicas` in the chorus-config ConfigMap an overlay renders."""
    wanted = CLUSTERED.get(str(name))
    if wanted is None:
        return []
    configs = [
        o
        for o in objects
        if o.get("kind") == "ConfigMap"
        and o["metadata"]["name"].startswith("chorus-config")
    ]
    if len(configs) != 1:
        return [f"{name}: {len(configs)} chorus-config ConfigMaps, expected one"]
    config = tomllib.loads(configs[0]["data"]["chorus.toml"])
    replicas = config.get("nats", {}).get("replicas", 1)
    if replicas != wanted:
        return [
            f"{name}: chorus.toml sets nats.replicas = {replicas}; on the JetStream cluster of "
            f"three every stream needs {wanted}"
        ]
    return []


def sync_interval(path, mounts, found=None):
    """The `sync_interval` a nats-server configuration file at `path` (in the container) leaves in
    effect, following `include`s (relative to the including file) through `mounts` (container path
    → file here). A `jetstream` block replaces an earlier one whole, as nats-server does."""
    for line in mounts[path].read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"include\s+[\"']?([^\"';]+)[\"']?;?", line):
            found = sync_interval(str(pathlib.PurePosixPath(path).parent / m[1]), mounts, found)
            continue
        if re.match(r"jetstream\s*[:=]?\s*\{", line):
            found = None
        if m := re.search(r"sync_interval\s*[:=]?\s*[\"']?(\w+)", line):
            found = m[1]
    return found


def compose_mounts(*files):
    """The NATS service's bind mounts across compose files: container path → file here."""
    mounts = {}
    for file in files:
        service = yaml.safe_load(file.read_text())["services"]["nats"]
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                mounts[target] = DEPLOY.parent / source
    return mounts


def durability():
    """Problems with the production NATS servers' sync_interval and the chart's cluster size."""
    problems = []
    values = yaml.safe_load((ROOT / "nats" / "values.yaml").read_text())
    config = values.get("config", {})
    chart = config.get("jetstream", {}).get("merge", {}).get("sync_interval")
    if chart != "always":
        problems.append(
            f"k8s/nats/values.yaml: config.jetstream.merge.sync_interval is {chart!r}, not 'always'"
        )
    if config.get("cluster", {}).get("replicas") != 3:
        problems.append("k8s/nats/values.yaml: config.cluster.replicas is not 3")
    base = DEPLOY.parent / "docker-compose.yml"
    prod = DEPLOY / "compose" / "docker-compose.prod.yml"
    mounts = compose_mounts(base, prod)
    command = yaml.safe_load(prod.read_text())["services"]["nats"].get("command", [])
    conf = command[command.index("-c") + 1] if "-c" in command else None
    if conf not in mounts:
        problems.append(f"{prod.name}: nats runs with -c {conf}, which is not mounted")
    elif (found := sync_interval(conf, mounts)) != "always":
        problems.append(f"{prod.name}: nats's {conf} leaves sync_interval {found!r}, not always")
    return problems


def main():
    custom = schemas()
    problems = durability()
    for target in TARGETS:
        name = target.relative_to(ROOT)
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(target)], capture_output=True, text=True
        )
        if rendered.returncode != 0:
            problems.append(f"{name}: kustomize failed: {rendered.stderr.strip()}")
            continue
        objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
        problems.extend(replicas_of(name, objects))
        for obj in objects:
            what = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            key = (obj.get("apiVersion"), obj.get("kind"))
            try:
                if key in custom:
                    jsonschema.validate(obj, custom[key])
                else:
                    kubernetes_validate.validate(obj, KUBERNETES, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{what}: no schema for {key[0]} {key[1]}")
            except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
                where = "/".join(str(p) for p in getattr(e, "path", []))
                problems.append(f"{what}: {where}: {e.message}")
        print(f"{name}: {len(objects)} objects")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(
        "every object is valid; staging and prod take 3 replicas, production NATS fsyncs always"
    )


main()
