# The one divims image: `divims exporter|scaler run|webhook|testbed|demo|simulate|config check`.
# No configuration or secret is baked in: docker-compose.yml mounts the config and passes secrets.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid so files on the shared volumes (the webhook's SQLite, the testbed's config) match.
RUN groupadd --system --gid 10001 divims \
 && useradd --system --uid 10001 --gid divims --home-dir /var/lib/divims --no-create-home \
            --shell /usr/sbin/nologin divims

WORKDIR /src
# Only what `pip install .` needs; the dependencies are pinned in pyproject.toml.
COPY pyproject.toml README.md ./
COPY divims ./divims
COPY exporter ./exporter
COPY scaler ./scaler
COPY alerting ./alerting
COPY testbed ./testbed
RUN pip install . \
 && rm -rf /src

# Named volumes mounted here start with this ownership (Docker copies it into an empty volume).
RUN mkdir -p /etc/divims /var/lib/divims/scaler /var/lib/divims/webhook /var/lib/divims/testbed \
 && chown -R divims:divims /var/lib/divims

USER divims:divims
WORKDIR /var/lib/divims
EXPOSE 9688 9689 9095
ENTRYPOINT ["divims"]
CMD ["--help"]
