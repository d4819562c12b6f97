# wasmcsi — one build profile (dev) for the host in tests and the demo: they
# share target/debug. Plugins are always release wasm (small, fast). Only
# `make bench` builds an optimised host, for figures worth quoting.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
CARGO ?= cargo
WASM_DIR := target/wasm32-wasip2/release
PLUGINS := local-dir hostile xsky-nfs plugin-template

.PHONY: setup plugins plugin-py test-plugin-py host demo test test-deploy test-sanity test-image test-kube image release bench clean

setup:
	scripts/setup.sh

plugins: setup
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))

# The plugin in Python (plugins/tmpfs-py), a component made by
# componentize-py at the version its requirements.txt pins (CI installs it
# with pip). Not part of `plugins` or `demo`: those need Rust alone.
PY_PLUGIN := $(WASM_DIR)/tmpfs_py.wasm
COMPONENTIZE_PY := $(shell sed -n 's/^componentize-py==//p' plugins/tmpfs-py/requirements.txt)

plugin-py: $(PY_PLUGIN)

$(PY_PLUGIN): wit/plugin.wit $(wildcard wit/deps/*.wit) plugins/tmpfs-py/requirements.txt $(wildcard plugins/tmpfs-py/*.py)
	@have=$$(componentize-py --version 2>/dev/null | awk '{print $$2}'); \
	if [ -z "$$have" ]; then \
	  printf '\n*** plugin-py: componentize-py is not installed: the Python plugin cannot be built.\n*** pip install -r plugins/tmpfs-py/requirements.txt\n\n' >&2; exit 1; \
	elif [ "$$have" != "$(COMPONENTIZE_PY)" ]; then \
	  printf '\n*** plugin-py: componentize-py %s found, %s pinned (plugins/tmpfs-py/requirements.txt)\n\n' "$$have" "$(COMPONENTIZE_PY)" >&2; exit 1; \
	fi
	cd plugins/tmpfs-py && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q test_sizes
	@mkdir -p $(WASM_DIR)
	componentize-py -d wit -w plugin componentize -p plugins/tmpfs-py app -o $@

# For `make test`: without componentize-py the Python plugin is skipped,
# loudly (its test says so too), except in CI (CI=true), where it fails.
test-plugin-py:
	@if command -v componentize-py >/dev/null || [ "$${CI:-}" = true ]; then \
	  $(MAKE) --no-print-directory plugin-py; \
	else \
	  printf '\n*** SKIPPING the Python plugin (plugins/tmpfs-py): componentize-py is not installed.\n*** pip install -r plugins/tmpfs-py/requirements.txt\n\n' >&2; \
	fi

# The driver, and the demo and benchmark beside it (host/testkit).
host:
	$(CARGO) build -p wasmcsi -p wasmcsi-testkit

# Builds everything and walks a volume through create → publish → fill →
# expand → fill → stats → delete, in image and in btrfs subvolume mode; then
# xsky-nfs against the XMS emulator: 5Gi → 10Gi, the quota tree before and after.
demo: plugins host
	target/debug/wasmcsi-demo
	$(CARGO) run -q -p wasmcsi --example xsky_demo

test-deploy: host
	WASMCSI_BIN=target/debug/wasmcsi deploy/check.sh

# csi-sanity, the CSI conformance suite, against the real binary in every
# mode (local-dir image and subvolume, xsky-nfs quota-tree and folder on the
# XMS emulator); see scripts/csi-sanity.sh and tests/sanity/.
test-sanity: plugins host
	$(CARGO) build -q -p xms-emulator
	scripts/csi-sanity.sh

# The driver image's recipe, checked: scripts/image.sh makes an OCI archive
# without Docker (mmdebstrap + buildah) holding the dev-profile host (the one
# build CI makes; `make image` ships the release one), and
# scripts/test-image.py unpacks it and runs its programs in its root
# filesystem: the tools the host execs, validate-config on deploy/'s configs.
test-image: plugins host
	scripts/image.sh --profile debug --out target/image/wasmcsi-dev.oci.tar
	scripts/test-image.py target/image/wasmcsi-dev.oci.tar

# The driver in a real single-node Kubernetes ($WASMCSI_SHARED/kube, default
# ../shared): per local-dir mode a PVC bound, used by a pod, expanded online
# and filled to its new size, then deleted with nothing left; capacity
# tracking (CSIStorageCapacity objects, a pod too big for them stays Pending).
# Without the kit it says SKIP, except in CI (CI=true). See scripts/test-kube.sh.
test-kube: plugins host
	scripts/test-kube.sh

# All the tests: the Kubernetes manifests, csi-sanity, the driver image, the
# driver in Kubernetes, then
# every crate's unit tests and the end-to-end tests against the real binary
# (last, so its summary closes).
test: plugins test-plugin-py test-deploy test-sanity test-image test-kube
	$(CARGO) test --workspace 2>&1 | tee target/test-output.log
	@awk '/^test result:/ { passed += $$4; failed += $$6 } \
	     END { printf "tests: %d passed, %d failed\n", passed, failed }' target/test-output.log

release: setup
	$(CARGO) build --release -p wasmcsi -p wasmcsi-testkit
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))

# The driver image as an OCI archive, built without a Docker engine (the
# Dockerfile's contents: docs/install.md). Push it with skopeo, or load it
# with `podman load -i`.
IMAGE ?= target/image/wasmcsi.oci.tar
image: release
	scripts/image.sh --profile release --out $(IMAGE)

# The figures of docs/performance.md: the whole driver over its socket (raw
# block volumes, then filesystem volumes per local-dir mode beside the
# reference driver when $WASMCSI_SHARED, default ../shared, has it), then
# the wasm runtime alone (instantiation, the boundary, cache, start-up).
bench: release
	@peer=$${WASMCSI_SHARED:-../shared}/tools/hostpathplugin; \
	if [ -x "$$peer" ]; then set -x; target/release/wasmcsi-bench --peer; \
	else echo "bench: $$peer not found: filesystem rows without the reference driver" >&2; \
	set -x; target/release/wasmcsi-bench; fi
	$(CARGO) bench -p wasmcsi --bench runtime

clean:
	$(CARGO) clean
