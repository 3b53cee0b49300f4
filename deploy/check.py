"""Checks the Kubernetes manifests: renders the base and every overlay with `kubectl kustomize`,
validates every built-in object against the Kubernetes API schemas (kubernetes-validate, offline,
strict: unknown fields are errors), and every custom resource (KEDA, Prometheus Operator,
cert-manager, External Secrets) against the schema of its fields kept in deploy/k8s/schemas. An
object of a kind with neither is an error. Run by .ci/run; exits non-zero naming each problem.
"""

import json
import pathlib
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES = "1.31.0"
ROOT = pathlib.Path(__file__).resolve().parent / "k8s"
TARGETS = [ROOT / "base"] + sorted((ROOT / "overlays").iterdir())


def schemas():
    found = {}
    for path in (ROOT / "schemas").glob("*.json"):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        found[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return found


def main():
    custom = schemas()
    problems = []
    for target in TARGETS:
        name = target.relative_to(ROOT)
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(target)], capture_output=True, text=True
        )
        if rendered.returncode != 0:
            problems.append(f"{name}: kustomize failed: {rendered.stderr.strip()}")
            continue
        objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
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
    print("every object is valid")


main()
