# A local stand-in for gcr.io/distroless/cc-debian12:nonroot, for CI machines that cannot pull it
# (deploy/smoke/smoke.py builds it; `--build-arg RUNTIME_BASE=localhost/chorus-standin/distroless-cc`
# puts the shipped runtime stage on it). It carries what distroless cc carries and the binary may
# use: glibc, libgcc, libssl, CA certificates, time zones, and the user nonroot (65532, home
# /home/nonroot). Unlike distroless it also has a shell and apt, so a run on it cannot prove that
# nothing needs a shell; the image's HEALTHCHECK is exec-form and needs none.
ARG DEBIAN_BASE=localhost/debian:bookworm
FROM ${DEBIAN_BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home \
       --shell /sbin/nologin nonroot
WORKDIR /home/nonroot
USER 65532:65532
