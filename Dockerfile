# syntax=docker/dockerfile:1
#
# The fedtier image: one image for the reducer, the combiners and the clients; the
# command picks the role (ENTRYPOINT is the `fedtier` command).
#
#   docker build -t fedtier:latest .
#   docker run --rm fedtier:latest --help
#
# It lives at the repository root because the build context must be the root anyway
# (setup.py, every package folder and test_projects/), and .dockerignore only works at
# the root of the context; compose/*.yaml build it with context "..".
# .dockerignore lets in only what the image needs (no .venv, .git, .env, tests or data).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build fedtier's wheel (setup.py maps reducer/, combiner/... under fedtier.*)
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY setup.py README.md ./
COPY fedtier/ fedtier/
COPY proto/ proto/
COPY reducer/ reducer/
COPY combiner/ combiner/
COPY client/ client/
COPY helpers/ helpers/
COPY launch/ launch/
COPY datatools/ datatools/
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

# ---- the runtime image
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_BACKEND=torch \
    FEDTIER_DATA_DIR=/var/lib/fedtier

# CPU-only PyTorch from PyTorch's own index, first: resolving torch from PyPI would pull
# the CUDA build (gigabytes). setup.py's torch==2.13.0 is then already satisfied.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# fedtier with the keras extra: Keras 3 on the torch backend. The last line fails the
# build if any dependency dragged TensorFlow in.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/fedtier-*.whl)[keras]" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)"

# A non-root user. /var/lib/fedtier (FEDTIER_DATA_DIR) is its only writable place;
# a named volume mounted there starts with this ownership.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/fedtier fedtier \
    && mkdir -p /var/lib/fedtier \
    && chown fedtier:fedtier /var/lib/fedtier

# The example projects, for `fedtier client --project test_projects/NAME` (read-only).
WORKDIR /app
COPY test_projects/ test_projects/

USER fedtier
EXPOSE 8090 12080
ENTRYPOINT ["fedtier"]
CMD ["--help"]
