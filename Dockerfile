# SpanServe images. Every stage builds with the scripts CI runs (scripts/test: setup, build,
# every test), so CI exercises these steps.
#
#   docker build --target cpu  -t spanserve:cpu  .     # Debian 12, CPU backend
#   docker build --target cuda -t spanserve:cuda .     # NVIDIA CUDA base (see below)
#
# Both serve gRPC on 50051 and Prometheus text on 9464 as a non-root user. Probe them with
# gRPC health (grpc.health.v1; service "spanserve.v1.SpanServe" for readiness), e.g. the
# bundled `spanserve-client health` (the HEALTHCHECK below) or Kubernetes' native grpc probe.

# ---- build (CPU): setup, build and test exactly as CI does -------------------------------
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN scripts/test release && scripts/install_runtime_tree build/release /opt/spanserve

# ---- cpu: Debian 12 with the server, the client and the bundled models -------------------
FROM debian:12 AS cpu
COPY --from=build /opt/spanserve /opt/spanserve
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(cat /opt/spanserve/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home spanserve
USER 10001:10001
ENV PATH=/opt/spanserve/bin:$PATH
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
  CMD ["spanserve-client", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["spanserve-server", "--listen=0.0.0.0:50051", "--metrics_address=0.0.0.0:9464"]
CMD ["--model=/opt/spanserve/models/spanserve-span-12l"]

# ---- cuda: NVIDIA's CUDA devel image to build, its runtime image to run ------------------
# This build has no CUDA backend yet (DESIGN.md §3: it will be a dlopen'ed plugin built when
# nvcc is found, as it is in the devel image). Until it lands, this target builds and tests
# the same CPU server on the CUDA base, so the image, the GPU scheduling
# (deploy/k8s/overlays/gpu) and the pipeline are ready. scripts/setup installs the build
# dependencies by their Debian package names, which Ubuntu 24.04 also carries.
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build-cuda
WORKDIR /src
COPY . .
RUN scripts/test release && scripts/install_runtime_tree build/release /opt/spanserve

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS cuda
COPY --from=build-cuda /opt/spanserve /opt/spanserve
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(cat /opt/spanserve/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home spanserve
USER 10001:10001
ENV PATH=/opt/spanserve/bin:$PATH
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
  CMD ["spanserve-client", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["spanserve-server", "--listen=0.0.0.0:50051", "--metrics_address=0.0.0.0:9464"]
CMD ["--model=/opt/spanserve/models/spanserve-span-12l"]
