# A local stand-in for prom/prometheus: Debian's prometheus package, run as upstream runs it
# (user nobody, 65534, data in /prometheus, the compose `command` as its arguments).
ARG DEBIAN_BASE=localhost/debian:bookworm
FROM ${DEBIAN_BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown nobody:nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
