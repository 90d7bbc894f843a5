# pgmedic in a container. Build: docker build -t pgmedic .
# Run:   docker run -v /etc/pgmedic:/etc/pgmedic:ro -v pgmedic-state:/var/lib/pgmedic pgmedic
FROM rust:1-bookworm AS build
# pg_query builds PostgreSQL's own parser and generates its bindings with bindgen: libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/pgmedic \
 && mkdir -p /out && cd /out \
 && /src/target/release/pgmedic completions bash > pgmedic.bash \
 && /src/target/release/pgmedic completions zsh > _pgmedic \
 && /src/target/release/pgmedic completions fish > pgmedic.fish \
 && /src/target/release/pgmedic man > pgmedic.1

FROM debian:bookworm-slim
# The client tools must be as new as the servers they dump: bookworm ships 15. The server
# binaries (postgresql-15: initdb, postgres) run pgmedic's ephemeral scratch cluster, where
# diagnose replays a failed migration on its baseline and proves finish and undo; for other
# majors install theirs, or set scratch.server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client postgresql-15 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/pgmedic --create-home pgmedic \
 && install -d -o pgmedic -g pgmedic -m 0750 /run/pgmedic /etc/pgmedic
COPY --from=build /src/target/release/pgmedic /usr/local/bin/pgmedic
# Shell completions and the man page, generated from the CLI definition at build time.
COPY --from=build /out/pgmedic.bash /usr/share/bash-completion/completions/pgmedic
COPY --from=build /out/_pgmedic /usr/share/zsh/vendor-completions/_pgmedic
COPY --from=build /out/pgmedic.fish /usr/share/fish/vendor_completions.d/pgmedic.fish
COPY --from=build /out/pgmedic.1 /usr/share/man/man1/pgmedic.1
COPY config/pgmedic.toml /etc/pgmedic/pgmedic.toml.example
USER pgmedic
# Absolute: the example's relative paths are from its own folder, /etc/pgmedic.
ENV PGMEDIC_CONFIG=/etc/pgmedic/pgmedic.toml \
    PGMEDIC_DAEMON__SOCKET=/run/pgmedic/pgmedic.sock \
    PGMEDIC_DAEMON__STATE_DIR=/var/lib/pgmedic \
    PGMEDIC_STORAGE__PATH=/var/lib/pgmedic/snapshots
VOLUME ["/var/lib/pgmedic"]
# `status` asks the daemon over its socket: it fails when the daemon does not answer.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 CMD ["pgmedic", "status"]
ENTRYPOINT ["pgmedic", "--log-format", "json"]
CMD ["daemon"]
