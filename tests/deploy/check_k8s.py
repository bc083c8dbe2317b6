#!/usr/bin/env python3
"""Validates deploy/k8s against the Kubernetes OpenAPI schemas (kubernetes-validate, which
ships them, so this works offline) and checks what the deployment promises.

Usage: check_k8s.py <k8s dir> [<kubernetes version>]

Renders the base and every overlay the way kustomize does for what they use (resources,
`images` tags, strategic merge patches that merge lists of named items by name), validates
every resource strictly (unknown fields fail), checks the ServiceMonitor (a CRD, with no
schema there) by structure, and checks the probes, drain grace and GPU request.
Exits 1 listing every problem.
"""
import copy
import os
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def merge(base, patch):
    """Strategic merge for the subset kustomize patches here use."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = [i for i, x in enumerate(out) if x["name"] == item["name"]]
            if match:
                out[match[0]] = merge(out[match[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def render(directory):
    kustomization = load_all(os.path.join(directory, "kustomization.yaml"))[0]
    docs = []
    for res in kustomization.get("resources", []):
        path = os.path.join(directory, res)
        docs += render(path) if os.path.isdir(path) else load_all(path)
    for p in kustomization.get("patches", []):
        for patch in load_all(os.path.join(directory, p["path"])):
            targets = [d for d in docs if d["kind"] == patch["kind"]
                       and d["metadata"]["name"] == patch["metadata"]["name"]]
            if not targets:
                raise SystemExit(f"{directory}: patch {p['path']} matches no resource")
            for d in targets:
                docs[docs.index(d)] = merge(d, patch)
    for image in kustomization.get("images", []):
        for d in docs:
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return docs


def schema_errors(doc, version):
    """Every violation of the strict schema (kubernetes_validate.validate stops at the
    first); None where the package has no schema for the kind."""
    schema_dir = f"v{[v for v in kv.all_versions() if kv.major_minor(v) <= version][-1]}-local-strict"
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    try:
        schema = kv.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/{doc['kind'].lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    defs = kv.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return sorted(validator.iter_errors(doc), key=lambda e: list(e.path))


def check_service_monitor(doc, problems, where):
    spec = doc.get("spec", {})
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{where}: apiVersion {doc.get('apiVersion')}")
    if not spec.get("selector", {}).get("matchLabels"):
        problems.append(f"{where}: spec.selector.matchLabels missing")
    endpoints = spec.get("endpoints") or []
    if not endpoints or not all(isinstance(e.get("port"), str) for e in endpoints):
        problems.append(f"{where}: spec.endpoints need a named port")
    return spec


def check(name, docs, version, problems):
    kinds = {}
    for doc in docs:
        where = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        kinds.setdefault(doc.get("kind"), []).append(doc)
        errors = schema_errors(doc, version)
        if errors is None and doc.get("kind") == "ServiceMonitor":
            check_service_monitor(doc, problems, where)
        elif errors is None:
            problems.append(f"{where}: no schema for {doc.get('apiVersion')}")
        for e in errors or []:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
    for kind in ("Deployment", "Service", "ServiceMonitor", "HorizontalPodAutoscaler",
                 "PodDisruptionBudget"):
        if kind not in kinds:
            problems.append(f"{name}: no {kind}")
    for dep in kinds.get("Deployment", []):
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        ready = c.get("readinessProbe", {}).get("grpc", {})
        if ready.get("service") != "spanserve.v1.SpanServe":
            problems.append(f"{name}: readiness must be a gRPC probe of spanserve.v1.SpanServe")
        if "grpc" not in c.get("livenessProbe", {}):
            problems.append(f"{name}: liveness must be a gRPC probe")
        drain = 30.0
        for arg in c.get("args", []):
            m = re.fullmatch(r"--drain_grace_s=([\d.]+)", arg)
            if m:
                drain = float(m.group(1))
        if pod.get("terminationGracePeriodSeconds", 30) < drain:
            problems.append(f"{name}: terminationGracePeriodSeconds < --drain_grace_s {drain}")
        if not c.get("resources", {}).get("requests"):
            problems.append(f"{name}: no resource requests")
    return kinds


def main():
    k8s = sys.argv[1]
    version = sys.argv[2] if len(sys.argv) > 2 else "1.29"
    problems = []
    check("base", render(os.path.join(k8s, "base")), version, problems)
    overlays = os.path.join(k8s, "overlays")
    for overlay in sorted(os.listdir(overlays)) if os.path.isdir(overlays) else []:
        kinds = check(f"overlays/{overlay}", render(os.path.join(overlays, overlay)), version,
                      problems)
        if overlay == "gpu":
            for dep in kinds.get("Deployment", []):
                limits = dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                if "nvidia.com/gpu" not in limits:
                    problems.append("overlays/gpu: no nvidia.com/gpu limit")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{k8s}: every manifest valid against Kubernetes {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
