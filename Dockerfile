# stockflow, built from source in one stage and run from a slim image.
#   docker build -t stockflow .
#   export STOCKFLOW_API_KEYS="$(openssl rand -hex 16):*:admin"   # KEY:TENANT:RIGHT, comma separated
#   docker run -p 127.0.0.1:8080:8080 -e STOCKFLOW_API_KEYS stockflow              # serve
#   docker run -p 127.0.0.1:8080:8080 -e STOCKFLOW_API_KEYS stockflow demo --listen 0.0.0.0:8080
#   curl -H "Authorization: Bearer ${STOCKFLOW_API_KEYS%%:*}" localhost:8080/v1/stock
# `-e STOCKFLOW_API_KEYS` without a value passes the variable on from this
# shell, so the key is not on a command line (`docker inspect` still shows it).
FROM rust:1-bookworm AS build
# librdkafka (bundled by the rdkafka crate) builds with make and needs zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin stockflow

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/stockflow stockflow
COPY --from=build /src/target/release/stockflow /usr/local/bin/stockflow
USER stockflow
WORKDIR /var/lib/stockflow
ENV STOCKFLOW_DATA_DIR=/var/lib/stockflow
VOLUME ["/var/lib/stockflow"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["stockflow"]
# Listens on every interface of the container, so the keys are required:
# STOCKFLOW_API_KEYS (or --api-keys) from the environment. Without any,
# stockflow refuses a non-loopback address and exits (code 2) saying so.
# Every /v1 request then needs `Authorization: Bearer KEY`; /health (the
# health check above), /ready and /metrics need none: publish the port only
# where that is acceptable, behind a TLS proxy (docs/security.md).
CMD ["serve", "--listen", "0.0.0.0:8080"]
