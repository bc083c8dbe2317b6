# SpanServe images. Every stage builds with the scripts CI runs (scripts/test: setup, build,
# every test), so CI exercises these steps.
#
#   docker build --target cpu  -t spanserve:cpu  .     # Debian 12, CPU backend
#   docker build --target cuda -t spanserve:cuda .     # NVIDIA CUDA base (see below)
#   scripts/test-image                                 # podman/buildah, no registry needed:
#       makes debian:12 with debootstrap, builds both targets, serves the cpu image and
#       probes it (gRPC health, Generate, HTTP, /metrics, drain on stop); docs/DEPLOY.md
#
# Both serve gRPC on 50051 and Prometheus text on 9464 as a non-root user. Probe them with
# gRPC health (grpc.health.v1; service "spanserve.v1.SpanServe" for readiness), e.g. the
# bundled `spanserve-client health` (the HEALTHCHECK below) or Kubernetes' native grpc probe.
# HEALTHCHECK is a Docker-format instruction: build with buildah/podman `--format docker`.
#
# Layer order, so that a rebuild after a source change redoes only the compile-and-test step
# and what follows it:
#   1. the dependencies: the Debian packages, the Python environments (.venv-deploy,
#      .venv-grpc, .venv-clients) and the SmolLM2 model that scripts/setup installs, from a
#      COPY of only the files scripts/setup reads (scripts/setup, scripts/fetch_models,
#      clients/python/requirements-test.txt; add any file it comes to read);
#   2. COPY . . and scripts/test release (build, every test) + scripts/install_runtime_tree,
#      compiling through ccache in a cache mount (content-hashed: unchanged translation units
#      are not recompiled, and a stale object is never reused);
#   3. the runtime image: the runtime package list is copied and installed before the
#      binaries, so the apt layer is reused while the shared libraries stay the same.
# The build needs BuildKit (Docker 23+ default) or buildah/podman for RUN --mount.

# The CUDA bases: what the `cuda` target builds (with the CUDA backend plugin) and runs on. NVIDIA's images by default; scripts/test-image passes the Debian-built
# stand-ins (the cuda-devel-debian / cuda-runtime-debian stages at the end) where NVIDIA's are
# not in local storage and no registry is reachable.
ARG cuda_devel_image=nvidia/cuda:13.0.0-devel-ubuntu24.04
ARG cuda_runtime_image=nvidia/cuda:13.0.0-runtime-ubuntu24.04

# ---- build (CPU): setup, build and test exactly as CI does -------------------------------
FROM debian:12 AS build
WORKDIR /src
# pch_defines,time_macros: ccache caches the test programs' precompiled header and what
# includes it (it hashes the header itself; tests/CMakeLists.txt, spanserve_test_pch).
ENV CCACHE_DIR=/ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_SLOPPINESS=pch_defines,time_macros
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ccache \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/setup scripts/fetch_models scripts/
COPY clients/python/requirements-test.txt clients/python/
RUN scripts/setup
COPY . .
RUN --mount=type=cache,id=spanserve-ccache,target=/ccache \
    ccache --zero-stats >/dev/null \
 && scripts/test release && scripts/install_runtime_tree build/release /opt/spanserve \
 && ccache --show-stats

# ---- cpu: Debian 12 with the server, the client and the bundled models -------------------
FROM debian:12 AS cpu
COPY --from=build /opt/spanserve/runtime-packages /opt/spanserve/runtime-packages
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(cat /opt/spanserve/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home spanserve
COPY --from=build /opt/spanserve /opt/spanserve
USER 10001:10001
ENV PATH=/opt/spanserve/bin:$PATH
EXPOSE 50051 8000 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
  CMD ["spanserve-client", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["spanserve-server", "--listen=0.0.0.0:50051", "--http_address=0.0.0.0:8000", "--metrics_address=0.0.0.0:9464"]
CMD ["--model=/opt/spanserve/models/spanserve-span-12l"]

# ---- cuda: a CUDA devel image to build, its runtime image to run -------------------------
# The devel image has nvcc, so the build makes the CUDA backend plugin libspanserve_cuda.so
# (DESIGN.md §3; CUDA 12 or later, for C++20) beside the CPU server, and the tests run its
# kernels on the CPU emulation (no GPU is needed to build). The image serves with
# --device=auto: on the GPU when the container has one (the NVIDIA Container Toolkit mounts
# the driver), else on the CPU. scripts/setup installs the build dependencies by their Debian
# package names, which Ubuntu 24.04 also carries.
FROM ${cuda_devel_image} AS build-cuda
WORKDIR /src
ENV CCACHE_DIR=/ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache CCACHE_SLOPPINESS=pch_defines,time_macros
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ccache \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/setup scripts/fetch_models scripts/
COPY clients/python/requirements-test.txt clients/python/
RUN scripts/setup
COPY . .
RUN --mount=type=cache,id=spanserve-ccache,target=/ccache \
    nvcc --version && ccache --zero-stats >/dev/null \
 && scripts/test release && scripts/install_runtime_tree build/release /opt/spanserve \
 && ccache --show-stats

FROM ${cuda_runtime_image} AS cuda
COPY --from=build-cuda /opt/spanserve/runtime-packages /opt/spanserve/runtime-packages
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(cat /opt/spanserve/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home spanserve
COPY --from=build-cuda /opt/spanserve /opt/spanserve
USER 10001:10001
ENV PATH=/opt/spanserve/bin:$PATH
EXPOSE 50051 8000 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
  CMD ["spanserve-client", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["spanserve-server", "--device=auto", "--listen=0.0.0.0:50051", "--http_address=0.0.0.0:8000", "--metrics_address=0.0.0.0:9464"]
CMD ["--model=/opt/spanserve/models/spanserve-span-12l"]

# ---- CUDA bases from debian:12 (Debian's own CUDA 11.8 toolkit, non-free) ----------------
# For machines that reach Debian's archive but no container registry: scripts/test-image
# builds these and tags them localhost/spanserve-cuda-devel:11.8-bookworm and
# localhost/spanserve-cuda-runtime:11.8-bookworm, then builds `cuda` with
#   --build-arg cuda_devel_image=localhost/spanserve-cuda-devel:11.8-bookworm
#   --build-arg cuda_runtime_image=localhost/spanserve-cuda-runtime:11.8-bookworm
# devel: nvcc and the CUDA libraries (nvidia-cuda-toolkit); runtime: the CUDA runtime and
# cuBLAS. The driver (libcuda.so.1) comes from the host, mounted by the NVIDIA Container
# Toolkit as with NVIDIA's images (hence the two NVIDIA_ variables).
FROM debian:12 AS cuda-devel-debian
RUN sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' \
      /etc/apt/sources.list.d/debian.sources \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      nvidia-cuda-toolkit \
 && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM debian:12 AS cuda-runtime-debian
RUN sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' \
      /etc/apt/sources.list.d/debian.sources \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libcudart11.0 libcublas11 \
 && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
