# Ferry: one Makefile for set-up, checks, tests and the local stack.
# `make` alone lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MEMBERS := proto libs/bus libs/runtime libs/providers libs/platform libs/testing \
           services/migration-controller services/volume-service \
           services/conversion-service services/vm-service services/cli \
           services/console
DATA_DIR ?= .ferry
# `make demo` starts afresh in its own data dir each time (inside the ignored .ferry/).
DEMO_DATA_DIR ?= .ferry/demo
# Parallel workers for the fast tiers: most tests wait on processes and the bus, not the CPU.
JOBS ?= 4
# The slow tier (virt-v2v under emulation, kills, e2e) two at a time: on two cores the
# conversions overlap with the other test's waits; each test owns its data dir and ports.
SLOW_JOBS ?= 2

# Debian packages the tests and the demo use (virt-v2v, QEMU, libguestfs, NBD, a
# kernel for the libguestfs appliance, debootstrap for the test guest, OVMF for UEFI;
# headless Chromium and its driver for the console's browser test; Go and govmomi to
# build the vSphere API simulator; libvirt's daemon and clients for the libvirt
# provider, whose Python binding builds against libvirt-dev with pkg-config; promtool,
# from prometheus, checks and unit-tests the chart's alert rules; the oVirt provider:
# the engine SDK builds against libxml2-dev, and its disk reader
# serves an imageio transfer as NBD through nbdkit's Python plugin).
SYSTEM_PACKAGES := qemu-utils qemu-system-x86 virt-v2v libguestfs-tools guestfs-tools \
                   nbdkit libnbd-bin linux-image-amd64 debootstrap ovmf strace openssl \
                   chromium chromium-driver golang-go golang-github-vmware-govmomi-dev \
                   libvirt-daemon-system libvirt-clients libvirt-dev pkg-config \
                   prometheus libxml2-dev nbdkit-plugin-python

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: $(BIN)/.installed ## Create .venv with the locked dependencies and every member (editable)

$(BIN)/.installed: requirements.lock $(foreach m,$(MEMBERS),$(m)/pyproject.toml)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps $(foreach m,$(MEMBERS),-e $(m))
	touch $@

.PHONY: system-deps
system-deps: ## Install the Debian packages the tests need (as root; only what is missing)
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	  done); \
	if [ -z "$$missing" ]; then echo "system packages: all present"; exit 0; fi; \
	echo "installing: $$missing"; \
	if [ "$$(id -u)" != 0 ]; then echo "run as root (or: sudo make system-deps)" >&2; exit 1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq; \
	apt-get install -y -qq --no-install-recommends $$missing

.PHONY: lock
lock: ## Regenerate requirements.lock from the members' pyproject.toml files
	uv lock
	uv export --no-hashes --no-emit-workspace --all-groups --format requirements-txt \
	  --no-header -o requirements.lock
	rm -f uv.lock

.PHONY: lint
lint: setup ## ruff, mypy (strict) and the import-linter layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: schemas
schemas: setup ## Write the JSON Schemas and the AsyncAPI document into proto/
	$(BIN)/python -m ferry.proto.schemagen

.PHONY: crds
crds: setup ## Write the chart's CRDs (charts/ferry/crds) from the models
	$(BIN)/python -m ferry.platform.crdgen

.PHONY: docs
docs: setup ## Write the message table of docs/ARCHITECTURE.md from proto/
	$(BIN)/python -m ferry.proto.docgen

.PHONY: test-fast
test-fast: setup ## Unit and integration tests but the slow and heavy ones (parallel, < 2 min)
	$(BIN)/pytest tests/unit tests/integration -m "not slow and not e2e and not heavy" -q -n $(JOBS) --durations=25

.PHONY: test-heavy
test-heavy: setup ## The integration modules with heavy real components (stand-in cluster, vcsim, libvirt, Chromium)
	$(BIN)/pytest tests/integration -m "heavy and not slow" -q -n $(JOBS)

.PHONY: test-cluster
test-cluster: setup ## The kubernetes platform, conversion pods and the 4-service e2e of flows 3 (OVA, vSphere), 2 (oVirt) and 1 (oVirt, vSphere) against the cluster stand-in (root)
	$(BIN)/pytest tests/integration/cluster -q -n 2

.PHONY: test-vsphere
test-vsphere: setup ## The vSphere provider and its e2e migrations against vcsim (built from Debian's govmomi on first use)
	$(BIN)/pytest tests/integration/vsphere tests/unit/providers/test_vsphere_validator.py -q -n $(JOBS)
	$(BIN)/pytest tests/e2e/test_vsphere.py tests/e2e/test_vsphere_cold.py tests/e2e/test_vsphere_faults.py -q

.PHONY: test-ovirt
test-ovirt: system-deps setup ## The oVirt source: the real imageio daemon, the engine stand-in, e2e flows 2 and 1 (also on the cluster stand-in)
	$(BIN)/pytest tests/integration/testing/test_imageio.py tests/integration/providers/test_ovirt.py tests/integration/providers/test_ovirt_warm.py tests/integration/testing/test_ovirt_engine_backups.py tests/integration/cluster/test_warm_rounds.py tests/integration/cluster/test_round_resume.py -q
	$(BIN)/pytest tests/e2e/test_ovirt.py tests/e2e/test_ovirt_faults.py tests/integration/cluster/test_e2e_kubernetes_flow2.py tests/integration/cluster/test_e2e_kubernetes_warm.py -q

.PHONY: test-kvm
test-kvm: system-deps setup ## The libvirt/KVM source: provider, warm rounds, controller's warm loop, e2e flows 1 and 2 (starts libvirtd)
	$(BIN)/pytest tests/unit/providers/test_libvirt_inventory.py tests/unit/volume_service/test_warm.py \
	  tests/integration/providers/test_libvirt.py tests/integration/volume_service/test_libvirt_source.py \
	  tests/integration/controller/test_warm_and_hooks.py -q
	$(BIN)/pytest tests/e2e/test_libvirt_faults.py tests/e2e/test_libvirt.py -q

.PHONY: test
test: system-deps setup lint ## Everything: lint, unit, integration, slow, faults, e2e
	$(BIN)/python -m ferry.proto.schemagen --check
	$(BIN)/python -m ferry.proto.docgen --check
	$(BIN)/python -m ferry.platform.crdgen --check
	$(BIN)/pytest tests -m "not slow" -q -n $(JOBS) --durations=25
	$(BIN)/pytest tests -m "slow" -q -n $(SLOW_JOBS) --durations=50

.PHONY: up
up: setup ## Start the local stack in the background (ferry up --detach)
	$(BIN)/ferry up --detach --data-dir $(DATA_DIR)

.PHONY: down
down: setup ## Stop the local stack
	$(BIN)/ferry down --data-dir $(DATA_DIR)

.PHONY: demo
demo: system-deps setup ## The main job: migrate the test guest OVA through all four services, boot it
	$(BIN)/python examples/demo.py --data-dir $(DEMO_DATA_DIR) $(if $(filter 1,$(DEMO_DOWN)),--down,)

.PHONY: images
images: setup ## Build both images (Dockerfile, Dockerfile.conversion) with buildah from Debian's packages and run their checks (root; not part of `make test`)
	$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES="buildah crun debootstrap"
	$(BIN)/python images/build.py $(IMAGES_ARGS)

.PHONY: chaos
chaos: system-deps setup ## 20 raw-copy migrations under `ferry up` with 100 kill -9s (bench/chaos), checked
	$(BIN)/python bench/chaos/run.py $(CHAOS_ARGS)

.PHONY: bench
bench: setup ## Run every benchmark script in bench/*/ (chaos: `make chaos`) and print its report
	@for script in bench/*/*.py; do \
	  [ -f "$$script" ] && grep -q '__main__' "$$script" || continue; \
	  case "$$script" in bench/chaos/*) continue;; esac; \
	  echo "== $$script"; $(BIN)/python "$$script"; \
	done
