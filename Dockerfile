# The services' image: the four services, the console, the ferry command, and the
# populator pods (ferry.platform.kubernetes.fill). The service is chosen by the command
# (ferry-volume-service, …). Conversion pods use Dockerfile.conversion's image instead:
# virt-v2v and libguestfs (with a kernel for its appliance) stay out of this one.
# Built from the lock file, like `make setup`.

# The Python base of every stage: Debian bookworm with Python 3.11. `make images` builds
# one from Debian's own packages (images/build.py) where the default cannot be pulled.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the locked dependencies and Ferry's packages in a venv --------------------
FROM ${PYTHON_IMAGE} AS build
# A compiler and headers for the locked packages that ship as sources only
# (libvirt-python, ovirt-engine-sdk-python, pycurl); this stage is thrown away.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc pkg-config libvirt-dev libxml2-dev libcurl4-openssl-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
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

# -- services: the venv, what the copy engine runs (qemu-img, qemu-nbd, nbdkit and its
# Python plugin for oVirt image transfers) and the compiled packages' shared libraries
FROM ${PYTHON_IMAGE} AS services
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      qemu-utils nbdkit nbdkit-plugin-python libnbd-bin ca-certificates \
      libvirt0 libxml2 libcurl4 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/ferry /opt/ferry

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/ferry \
    PATH=/opt/ferry/bin:$PATH

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/ferry ferry
# Mount points of docker-compose.yml's volumes, owned by ferry so that a new named
# volume takes this owner and mode: NATS's store, and one private folder per NATS
# identity (written once by the compose service "identities", each mounted only by
# the container it belongs to).
RUN install -d -m 0700 -o ferry -g ferry /var/lib/nats /run/ferry/nats /etc/nats/identities \
      /var/lib/ferry-identities \
 && for i in controller volume conversion vm cli audit server; do \
      install -d -m 0700 -o ferry -g ferry /var/lib/ferry-identities/$i; done
USER ferry
WORKDIR /var/lib/ferry
ENV FERRY_DATA_DIR=/var/lib/ferry FERRY_HTTP__PORT=8080
EXPOSE 8080
CMD ["ferry", "--help"]
