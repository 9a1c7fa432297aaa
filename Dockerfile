# hoopfast gateway image: builds the Rust core and the Cython pump, then runs
# `hoopfast serve`. Configure with HOOPFAST_* variables and a mounted TOML.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential curl ca-certificates \
    libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir "maturin>=1.4,<2" "Cython>=3.0" "setuptools>=77" wheel \
    && (cd rust && maturin build --release -o /wheels) \
    && pip wheel --no-build-isolation --no-deps -w /wheels .

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --home /var/lib/hoopfast hoopfast
USER hoopfast
WORKDIR /var/lib/hoopfast
ENV HOOPFAST_PG_LISTEN=0.0.0.0:15432 HOOPFAST_STATE_DIR=/var/lib/hoopfast HOOPFAST_IMPL=compiled
EXPOSE 15432
ENTRYPOINT ["hoopfast"]
CMD ["serve"]
