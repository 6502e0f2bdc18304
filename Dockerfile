# natster-global: the image ops/k8s/natster-global.yaml runs.
#   docker build -t ghcr.io/natster/natster-global:0.1.0 .
# Build stage: the release binary (the toolchain version the project is tested with).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin natster-global

# Runtime: distroless with glibc and CA roots, nothing else (no shell, no package manager),
# as the non-root user 65532 the manifest's securityContext names.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/natster-global /usr/local/bin/natster-global
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/natster-global"]
CMD ["serve"]
