# Test-only stand-ins for the cluster's backing services, run inside the container tier's shared
# network namespace: PostgreSQL (Debian's) and an S3 endpoint (moto_server) in MinIO's place.
# The dinoflow images themselves are built from docker/; only these two services are stand-ins.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG MOTO_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/svc \
 && /opt/svc/bin/pip install --no-cache-dir "moto[server]==${MOTO_VERSION}"
ENV PATH=/usr/lib/postgresql/15/bin:/opt/svc/bin:$PATH
