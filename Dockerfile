# CPU image: builds with the same scripts CI runs, then ships the binaries and models.
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN scripts/test release

FROM debian:12-slim AS cpu
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      libgomp1 libabsl20220623 libpcre2-8-0 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/release/tools/spanserve-cli /usr/local/bin/spanserve-cli
COPY --from=build /src/models /models
ENTRYPOINT ["spanserve-cli"]
CMD ["generate", "--model", "/models/spanserve-span-12l"]
