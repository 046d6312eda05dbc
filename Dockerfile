# The tandem image: Debian's Python and nginx (the nginx 1.22 that tandem is tested against),
# tandem installed in a venv. compose.yaml runs one tandem command per container; alone,
# `docker run -p 8080:8080 tandem:local` runs the whole stack (tandem up) in one container.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv nginx ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY cluster /src/cluster
COPY nginx /src/nginx
COPY origin /src/origin
COPY syncer /src/syncer
RUN python3 -m venv /opt/tandem \
 && /opt/tandem/bin/pip install --no-cache-dir /src \
 && rm -rf /src

COPY docker/tandem.toml /etc/tandem/tandem.toml
ENV PATH=/opt/tandem/bin:$PATH \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/tandem
EXPOSE 8080
CMD ["tandem", "--config", "/etc/tandem/tandem.toml", "up"]
