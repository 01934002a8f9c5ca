# syntax=docker/dockerfile:1
# livegate: RTMP publish -> RTMP / HTTP-FLV play (later WebRTC / HLS).
#   docker build -t livegate .
#   docker run --rm -p 1935:1935 -p 8080:8080 livegate

############################ build ############################
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The same setup script as developers and CI; the "build" profile skips the test-only tools
# (Chromium, Node, ffmpeg, npm packages) and installs build deps (pkg-config, GStreamer -dev, rustfmt/clippy).
COPY scripts/setup.sh scripts/setup.sh
RUN LIVEGATE_SETUP_PROFILE=build bash scripts/setup.sh \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=livegate-target \
    cargo build --release --locked --bin livegate \
 && install -D -m 0755 target/release/livegate /out/livegate

############################ runtime ############################
FROM debian:bookworm-slim AS runtime
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates tini \
      ffmpeg \
      libgstreamer1.0-0 libgstreamer-plugins-base1.0-0 libgstreamer-plugins-bad1.0-0 \
      gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
      gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/livegate --shell /usr/sbin/nologin livegate
COPY --from=build /out/livegate /usr/local/bin/livegate
# The demo page served at / and the pipeline templates (the built-in ones are compiled in; these can be edited).
COPY --chown=livegate web /var/lib/livegate/web
COPY --chown=livegate pipelines /var/lib/livegate/pipelines
USER livegate
WORKDIR /var/lib/livegate
# RTMP, HTTP (HTTP-FLV, HLS, WHEP signalling, API), and one UDP port per WebRTC viewer ([webrtc] range;
# set webrtc.ice_ip to the host's address, e.g. with --config).
EXPOSE 1935 1936 8080 8443 8189/udp
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["livegate", "serve"]
