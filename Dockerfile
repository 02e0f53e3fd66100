# stockflow, built from source in one stage and run from a slim image.
#   docker build -t stockflow .
#   docker run -p 127.0.0.1:8080:8080 stockflow demo --listen 0.0.0.0:8080 --insecure-listen
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
# API keys are not built yet: stockflow refuses a non-loopback address
# without --insecure-listen. Publish the port only where it is private.
CMD ["serve", "--listen", "0.0.0.0:8080", "--insecure-listen"]
