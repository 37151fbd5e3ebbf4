# l2s-pipelines BIDS App, Docker image. Same base, install steps, environment and entry point as
# the Apptainer definition `Singularity` beside it; tools/container_check.py --definition
# Dockerfile runs its pip steps and self-test without a Docker engine and checks that both
# definitions agree. Build (network needed only here), then run offline and read-only:
#   docker build -t l2s-pipelines:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp --network none -u "$(id -u):$(id -g)" \
#     -v /data/bids:/data:ro -v /data/derivatives/l2s-pipelines:/out -v /scratch/work:/work \
#     l2s-pipelines:0.1.0 /data /out participant -w /work --participant-label 01
#   docker run ... --gpus all l2s-pipelines:0.1.0 ... --device cuda      (NVIDIA GPUs)
#   docker run ... --entrypoint l2s-segment l2s-pipelines:0.1.0 /data/t1.nii.gz -o /out
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="l2s-pipelines" \
      org.opencontainers.image.description="BIDS App: brain MRI segmentation with Learn2Synth-trained networks" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      Version="0.1.0"

COPY . /opt/l2s-pipelines

RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates procps && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m pip install --upgrade pip
# CUDA-capable torch from the default index (bundles its CUDA runtime; --gpus supplies the driver)
RUN python -m pip install "torch>=2.2"
RUN python -m pip install "/opt/l2s-pipelines[dask]"
# TemplateFlow files used by --output-spaces, fetched at build time (no download at run time)
ENV TEMPLATEFLOW_HOME=/opt/templateflow
RUN mkdir -p "$TEMPLATEFLOW_HOME"
RUN python -c "import templateflow.api as tf; [tf.get('MNI152NLin2009cAsym', resolution=r, suffix=s, desc=d, label=l, extension='.nii.gz') for r in (1, 2) for s, d, l in (('T1w', None, None), ('mask', 'brain', None), ('probseg', None, 'CSF'), ('probseg', None, 'GM'), ('probseg', None, 'WM'))]"
RUN python -c "from l2s_pipelines.workflows.templates import get_template_files; [get_template_files('MNI152NLin2009cAsym', r) for r in (1, 2)]"
RUN chmod -R a+rX /opt/templateflow /opt/l2s-pipelines && rm -rf /opt/l2s-pipelines/.git /opt/l2s-pipelines/.venv /opt/l2s-pipelines/benchmarks/results

ENV NO_ET=1 \
    NIPYPE_NO_ET=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    LC_ALL=C.UTF-8 \
    LANG=C.UTF-8

# container_check: test (the Singularity %test, run at build time: a broken image does not build)
RUN set -eu; l2s-bids --version; python -c "from l2s_pipelines.workflows.templates import get_template_files; get_template_files('MNI152NLin2009cAsym', 1)"; selftest="$(mktemp -d)"; l2s-demo --output "$selftest" --n-subjects 1 --nprocs 1; find "$selftest"/derivatives/l2s-pipelines -name '*_dseg.nii.gz' | grep -q . || { echo "self-test: no segmentation written" >&2; exit 1; }; rm -rf "$selftest"

ENTRYPOINT ["l2s-bids"]
