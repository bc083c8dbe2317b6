#!/usr/bin/env python3
"""Checks deploy/compose.yaml: Debian's docker-compose validates it against the Compose
schema and resolves it (no Docker daemon needed); then every bind-mounted file must exist,
published ports must default to loopback, and the server must be built from the
Dockerfile's `cpu` target with a stop grace period longer than its --drain_grace_s.

Usage: check_compose.py <compose.yaml> [<Dockerfile>]    exit 1 listing the problems
"""
import os
import re
import subprocess
import sys

import yaml


def main():
    compose = os.path.abspath(sys.argv[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPANSERVE_", "COMPOSE_"))}
    run = subprocess.run(["docker-compose", "-f", compose, "config"], capture_output=True,
                         text=True, env=env)
    if run.returncode != 0:
        print(f"docker-compose config rejects {compose}:\n{run.stderr}")
        return 1
    config = yaml.safe_load(run.stdout)
    problems = []
    services = config.get("services", {})
    for name in ("spanserve", "prometheus", "grafana"):
        if name not in services:
            problems.append(f"no service {name}")
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is not on loopback by default")
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("/") and not os.path.exists(source):
                problems.append(f"{name}: mounts {source}, which does not exist")
    server = services.get("spanserve", {})
    build = server.get("build", {})
    dockerfile = os.path.join(build.get("context", ""), build.get("dockerfile", "Dockerfile"))
    if not build:
        problems.append("spanserve: not built from the Dockerfile")
    elif not os.path.isfile(dockerfile):
        problems.append(f"spanserve: no Dockerfile at {dockerfile}")
    elif not re.search(rf"^FROM \S+ AS {build.get('target')}$", open(dockerfile).read(),
                       re.MULTILINE | re.IGNORECASE):
        problems.append(f"spanserve: the Dockerfile has no stage {build.get('target')}")
    drain = 30.0
    for arg in server.get("command", []):
        m = re.fullmatch(r"--drain_grace_s=([\d.]+)", arg)
        if m:
            drain = float(m.group(1))
    grace = re.fullmatch(r"(\d+)s", str(server.get("stop_grace_period", "10s")))
    if not grace or float(grace.group(1)) <= drain:
        problems.append(f"spanserve: stop_grace_period must exceed --drain_grace_s={drain}")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{compose}: valid, services {', '.join(sorted(services))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
