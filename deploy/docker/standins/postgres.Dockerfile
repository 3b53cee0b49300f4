# A local stand-in for postgres:16-alpine: Debian's PostgreSQL 15 with an entrypoint honouring
# what the compose file uses of the upstream one — POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD(_FILE), the data directory /var/lib/postgresql/data initialised on first
# start — and pg_isready on the PATH for the healthcheck. Not the upstream image: no init scripts,
# no other variables.
ARG DEBIAN_BASE=localhost/debian:bookworm
FROM ${DEBIAN_BASE}
# No cluster made at install time: the entrypoint makes the one in the volume.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
