# CPU image: built with the same scripts CI runs (scripts/test: setup, build, every test),
# then serves the bundled default model. A slimmer runtime stage and a CUDA target come
# with the deployment work (issue 8); there is no CUDA backend yet.
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN scripts/test release

FROM build AS cpu
EXPOSE 50051 9464
ENV OMP_WAIT_POLICY=passive
ENTRYPOINT ["/src/build/release/server/spanserve-server", "--model", "/src/models/spanserve-span-12l", \
            "--listen", "0.0.0.0:50051", "--metrics_address", "0.0.0.0:9464"]
