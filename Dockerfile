# wasmcsi driver image: the host binary plus the built-in plugins.
#
#   docker build -t ghcr.io/wasmcsi/wasmcsi:0.1.0 .
#
# Without Docker, `make image` (scripts/image.sh) builds the same contents
# into an OCI archive: it reads this file's suite, ENTRYPOINT, CMD and LABELs
# and the same deploy/image/ lists; scripts/test-image.py (make test) checks
# the archive against this file.
#
# /usr/local/bin/wasmcsi   the driver (ENTRYPOINT)
# /plugins/*.wasm          built-in plugins: local_dir.wasm, xsky_nfs.wasm
# /plugins/extra/          where the manifests mount plugins added at deploy
#                          time (docs/writing-a-plugin.md)

FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate (host/build.rs): no system
# package needed.
COPY . .
RUN cargo build --release --locked -p wasmcsi \
 && cargo build --release --locked --target wasm32-wasip2 -p local-dir -p xsky-nfs

FROM debian:bookworm-slim
# What the host runs on behalf of plugins (mount/umount/blkid, mount.nfs and
# mount.cifs, mkfs/grow/repair of XFS and ext4, btrfs qgroups) and CA
# certificates for HTTPS to XMS: the packages of deploy/image/packages, which
# the build without Docker (scripts/image.sh, `make image`) installs too.
# dpkg leaves out the same docs and man pages as there.
COPY deploy/image/dpkg-excludes /etc/dpkg/dpkg.cfg.d/wasmcsi-excludes
COPY deploy/image/packages /tmp/packages
RUN apt-get update \
 && sed 's/#.*//' /tmp/packages | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/packages
COPY --from=build /src/target/release/wasmcsi /usr/local/bin/wasmcsi
COPY --from=build /src/target/wasm32-wasip2/release/local_dir.wasm \
                  /src/target/wasm32-wasip2/release/xsky_nfs.wasm \
                  /plugins/
RUN mkdir -p /plugins/extra
LABEL org.opencontainers.image.title="wasmcsi" \
      org.opencontainers.image.description="Kubernetes CSI driver whose storage back ends are sandboxed WebAssembly plugins" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/wasmcsi"]
CMD ["serve", "--config", "/etc/wasmcsi/config.yaml"]
