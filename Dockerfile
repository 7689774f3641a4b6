# dicomd as a container image: a virtual environment in /opt/dicomd, run as the unprivileged user
# dicomd (10001), data on the volume /var/lib/dicomd, configuration at /etc/dicomd/dicomd.toml.
#
#   docker build -t dicomd .                                  # dicomd's dependencies from PyPI
#   pip wheel . -w wheels                                     # or offline: a wheelhouse made first,
#   docker build --build-arg WHEELHOUSE=wheels -t dicomd .    # installed with pip --no-index
#
#   docker run -d -p 11112:11112 -v dicomd-data:/var/lib/dicomd \
#       -e DICOMD_SERVER__AE_TITLE=ARCHIVE dicomd             # settings by environment variables,
#   docker run ... -v ./dicomd.toml:/etc/dicomd/dicomd.toml:ro dicomd   # or by a mounted file
#
# Give `docker stop` more than [server] shutdown_timeout (30 s): `docker stop -t 40`, or
# stop_grace_period in compose; SIGTERM drains running operations, a second signal forces the exit.
# BASE_IMAGE must be a Debian-like image with python3 >= 3.11 and its venv module (scripts/
# container-check builds on a debootstrapped Debian bookworm, as no registry is reachable there).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Empty: install from PyPI. Otherwise a directory of the build context holding wheels for dicomd
# and all its dependencies (`pip wheel . -w wheels`): the build then needs no network at all.
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/dicomd
COPY . /src
RUN if [ -n "$WHEELHOUSE" ]; then \
        /opt/dicomd/bin/pip install --no-index --find-links "/src/$WHEELHOUSE" dicomd; \
    else \
        /opt/dicomd/bin/pip install /src; \
    fi \
    && /opt/dicomd/bin/dicomd --version

FROM ${BASE_IMAGE}
ARG DICOMD_UID=10001
RUN groupadd --system --gid "$DICOMD_UID" dicomd \
    && useradd --system --uid "$DICOMD_UID" --gid dicomd --home-dir /var/lib/dicomd \
        --no-create-home --shell /usr/sbin/nologin dicomd \
    && mkdir -p /var/lib/dicomd /etc/dicomd \
    && chown dicomd:dicomd /var/lib/dicomd \
    && chmod 0750 /var/lib/dicomd
COPY --from=build /opt/dicomd /opt/dicomd
COPY docker/dicomd.toml /etc/dicomd/dicomd.toml
COPY docker/healthcheck /usr/local/bin/dicomd-healthcheck
# The full PATH, not "...:$PATH": an image imported from a root filesystem has no PATH to extend.
ENV PATH=/opt/dicomd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DICOMD_CONFIG=/etc/dicomd/dicomd.toml
WORKDIR /var/lib/dicomd
# Store and index. Declared after the chown, so that a new named volume starts owned by dicomd.
VOLUME /var/lib/dicomd
EXPOSE 11112
# Numeric, so that orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER ${DICOMD_UID}:${DICOMD_UID}
STOPSIGNAL SIGTERM
# A C-ECHO to ourselves with the AE title and port of the effective configuration (file and
# DICOMD_* environment). Podman keeps HEALTHCHECK only in images built with --format docker.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 CMD ["dicomd-healthcheck"]
ENTRYPOINT ["dicomd"]
CMD ["serve", "--config", "/etc/dicomd/dicomd.toml"]
