#!/usr/bin/env python3
"""Checks the Dockerfile's structure (no Docker daemon here to build it): the `cpu` and
`cuda` targets exist, every build stage runs scripts/test (what CI runs) and
scripts/install_runtime_tree, and each target runs as a non-root user, exposes the gRPC
and metrics ports and has a health check.

Usage: check_dockerfile.py <Dockerfile>     exit 1 listing the problems
"""
import re
import sys


def stages(text):
    text = re.sub(r"\\\n", " ", text)
    out, name = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", line, re.IGNORECASE)
        if m:
            name = m.group(2) or m.group(1)
            out[name] = {"base": m.group(1), "lines": []}
        elif name:
            out[name]["lines"].append(line)
    return out


def main():
    text = open(sys.argv[1]).read()
    st = stages(text)
    problems = []
    for target in ("cpu", "cuda"):
        if target not in st:
            problems.append(f"no stage {target}")
            continue
        body = "\n".join(st[target]["lines"])
        froms = re.findall(r"COPY --from=(\S+)", body)
        if not froms or froms[0] not in st:
            problems.append(f"{target}: copies from no build stage")
            continue
        build = "\n".join(st[froms[0]]["lines"])
        for script in ("scripts/test release", "scripts/install_runtime_tree"):
            if script not in build:
                problems.append(f"{froms[0]} (build of {target}): does not run {script}")
        user = re.search(r"^USER\s+(\S+)", body, re.MULTILINE)
        if not user or user.group(1).split(":")[0] in ("root", "0"):
            problems.append(f"{target}: does not run as a non-root user")
        expose = re.search(r"^EXPOSE\s+(.*)$", body, re.MULTILINE)
        if not expose or not {"50051", "9464"} <= set(expose.group(1).split()):
            problems.append(f"{target}: does not EXPOSE 50051 9464")
        if "HEALTHCHECK" not in body:
            problems.append(f"{target}: no HEALTHCHECK")
    if "cuda" in st and "cuda" not in st[st["cuda"]["lines"] and re.findall(
            r"COPY --from=(\S+)", "\n".join(st["cuda"]["lines"]))[0]]["base"]:
        problems.append("cuda: its build stage is not on a CUDA base image")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{sys.argv[1]}: stages {', '.join(st)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
