# Berth: one image with the binaries (berth-backend, berth-scheduler, berth-session, the stock
# bot berth-bot and the `berth` CLI). The web client is compiled into berth-backend. Pick the program with the
# container's command, e.g. `docker run … berth-scheduler`. See docs/deploy.md.

# --- build -------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Everything the workspace needs (see .dockerignore); --locked builds exactly Cargo.lock.
COPY . .
RUN cargo build --release --locked \
        -p berth-backend -p berth-scheduler -p berth-session -p berth -p berth-bot \
    && mkdir -p /out \
    && cp target/release/berth-backend target/release/berth-scheduler \
          target/release/berth-session target/release/berth target/release/berth-bot /out/

# --- run ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/berth --create-home berth
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/berth
# Inside a container every service listens on all interfaces; the defaults elsewhere are
# loopback-only.
ENV BERTH_DATA_DIR=/var/lib/berth \
    BERTH_BACKEND_LISTEN=0.0.0.0:8080 \
    BERTH_SCHEDULER_LISTEN=0.0.0.0:7070 \
    BERTH_SESSION_LISTEN=0.0.0.0:9000
EXPOSE 8080 7070 9000
CMD ["berth-backend"]
