# The image every Sovra Deployment runs (deploy/base: `image: sovra`, renamed
# per instance by its overlay). Multi-stage: build with the pinned toolchain,
# ship only the binary and config/ on a distroless, non-root base.
#
#   docker build -t registry.sovra.example/sovra:0.1.0 .
#
# The build needs only crates.io; protoc is not needed (protox compiles the
# contracts in-process).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sovra \
 && strip target/release/sovra

# glibc and libgcc only (SQLite and ring are compiled in); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sovra /sovra
COPY --from=build /src/config /etc/sovra/config
ENV SOVRA_CONFIG_DIR=/etc/sovra/config
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/sovra"]
CMD ["serve", "identity"]
