# One image for the four services and the ferry command; the service is chosen by the
# command (ferry-volume-service, …). Built from the lock file, like `make setup`.
FROM python:3.11-slim-bookworm

# virt-v2v, libguestfs (with a kernel for its appliance), qemu-img and NBD tools: what
# the conversion and volume services run. Debian's packages, no extra repositories.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      qemu-utils qemu-system-x86 virt-v2v libguestfs-tools guestfs-tools nbdkit libnbd-bin \
      linux-image-amd64 ovmf ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ENV LIBGUESTFS_BACKEND=direct \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/ferry \
    PATH=/opt/ferry/bin:$PATH

WORKDIR /src
COPY requirements.lock ./
RUN python -m venv /opt/ferry && /opt/ferry/bin/pip install --no-cache-dir -r requirements.lock
COPY proto ./proto
COPY libs ./libs
COPY services ./services
RUN /opt/ferry/bin/pip install --no-cache-dir --no-deps \
      ./proto ./libs/bus ./libs/runtime ./libs/providers ./libs/platform \
      ./services/migration-controller ./services/volume-service \
      ./services/conversion-service ./services/vm-service ./services/cli \
      ./services/console

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/ferry ferry
USER ferry
WORKDIR /var/lib/ferry
ENV FERRY_DATA_DIR=/var/lib/ferry FERRY_HTTP__PORT=8080
EXPOSE 8080
CMD ["ferry", "--help"]
