# Multi-stage: build the wheel (C++ kernels included) once, ship a slim runtime image.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ cmake ninja-build \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md CMakeLists.txt ./
COPY csrc csrc
COPY backend backend
COPY ollama_compat ollama_compat
# The kernels pick their ISA at run time, so one wheel serves every x86-64 host.
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# CPU build of torch: the default index would pull several GB of CUDA libraries.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV OLLAMA_HOST=0.0.0.0:11434 \
    OLLAMA_MODELS=/models
VOLUME /models
EXPOSE 11434
ENTRYPOINT ["ollama-compat"]
CMD ["serve"]
