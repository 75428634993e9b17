# Owns the Trellis container images: one multi-stage file with a target per image, so the three
# images share one builder stage (one cargo build) and one definition of how a binary is built.
# The image names and tags are the ones the generated manifests use (control-plane/src/manifests.rs,
# injector/src/manifests.rs, and injector/src/config.rs for the proxy); cli/tests/images.rs fails
# when a manifest names an image no line below builds, or a tag is not the workspace version:
#
#   docker build --platform linux/amd64 --target proxy -t ghcr.io/trellis-mesh/trellis-proxy:0.1.0 .
#   docker build --platform linux/amd64 --target control-plane -t ghcr.io/trellis-mesh/trellis-control-plane:0.1.0 .
#   docker build --platform linux/amd64 --target injector -t ghcr.io/trellis-mesh/trellis-injector:0.1.0 .
#
# The binaries are statically linked against glibc (`-C target-feature=+crt-static`; the musl
# target is not needed) and run on `scratch`: cli/tests/static_binary.rs builds the proxy the
# same way and runs it in an empty chroot. `--target` matters: with it RUSTFLAGS apply only to the
# binaries, not to build scripts and proc macros, which stay dynamic host programs. The `dist`
# profile (release with fat LTO and one codegen unit: Cargo.toml) makes the binaries smaller and
# the sidecar's idle memory lower (docs/benchmarks.md, Footprint). Line tables are stripped;
# symbols stay, so backtraces name functions.

# The toolchain the workspace is built and tested with. Not the workspace's `rust-version`
# (1.85): kube 5 and serde-saphyr need 1.89.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --target x86_64-unknown-linux-gnu \
      -p trellis-proxy -p trellis-control-plane -p trellis-injector \
    && mkdir /out \
    && for bin in trellis-proxy trellis-control-plane trellis-injector; do \
         cp "target/x86_64-unknown-linux-gnu/dist/$bin" /out/ || exit 1; \
       done \
    && strip --strip-debug /out/*

# Everything the scratch images hold besides their binary, assembled by deploy/images/rootfs.sh
# (the script the chroot test runs too): /etc/nsswitch.conf for all; for the proxy also iptables.
# The injector runs the pod's `trellis-init` step (`trellis-proxy redirect`, root with NET_ADMIN
# and NET_RAW) from the proxy image, and the redirect shells out to iptables/ip6tables, so the
# proxy image carries iptables-nft with exactly its shared libraries (about 6 MB, no shell). The
# sidecar itself never runs them: it is uid 2102 with every capability dropped.
FROM debian:bookworm-slim AS rootfs
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/images/rootfs.sh /usr/local/bin/rootfs.sh
RUN sh /usr/local/bin/rootfs.sh /rootfs/base \
    && sh /usr/local/bin/rootfs.sh /rootfs/proxy --iptables

# The sidecar and the init step. uid 2102 is the uid the redirect rules exempt (the injector's
# `proxyUid`, `trellis-proxy redirect --proxy-uid`); the init container overrides it with 0.
FROM scratch AS proxy
COPY --from=rootfs /rootfs/proxy/ /
COPY --from=builder /out/trellis-proxy /usr/local/bin/trellis-proxy
ENV PATH=/usr/local/bin:/usr/sbin
USER 2102:2102
ENTRYPOINT ["trellis-proxy"]

# uid 65532 as the manifests' runAsUser and fsGroup.
FROM scratch AS control-plane
COPY --from=rootfs /rootfs/base/ /
COPY --from=builder /out/trellis-control-plane /usr/local/bin/trellis-control-plane
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["trellis-control-plane"]

FROM scratch AS injector
COPY --from=rootfs /rootfs/base/ /
COPY --from=builder /out/trellis-injector /usr/local/bin/trellis-injector
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["trellis-injector"]
