"""fiat_jax: FIAT, augmented fine-tuning and phased instruction tuning in JAX."""
from setuptools import find_packages, setup

# Exact pins: the stack verified together on Python 3.11 (see README, "The stack").
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "sentencepiece==0.2.3",
    "clu==0.0.12",
    "numpy==2.4.6",
    "scipy==1.17.1",  # sweeps/stats.py (Student-t); jax needs it too
    "protobuf==7.36.2",
    "gguf==0.19.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "jinja2==3.1.6",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "httpx==0.28.1",
    # `tensorboard --logdir MODEL_DIR/tb` on the event files every run writes (matches tensorflow 2.21).
    "tensorboard==2.21.0",
]

EXTRAS = {
    "test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "pytest-xdist==3.8.0", "execnet==2.1.2",
             "scikit-learn==1.9.1"],
    # Optional cross-checks against PyTorch implementations only; never needed to train.
    "reference": ["torch==2.13.0", "transformers==5.23.0", "peft==0.21.2"],
    # benchmarks/ only (the Tunix + qwix peer); fiat_jax itself never imports qwix.
    "benchmark": ["qwix==0.1.8"],
    # NVIDIA GPUs: jax's CUDA 12 wheels matching jax==0.10.2 (the CUDA libraries come from pip too).
    "cuda": ["jax-cuda12-plugin[with-cuda]==0.10.2", "jax-cuda12-pjrt==0.10.2"],
    # Cloud TPU VMs: libtpu matching jax==0.10.2, as launch/tpu.py installs it.
    "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],
    # llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server`) for tests/test_teachers_llamacpp_server.py
    # and local teachers; llama-cpp-python builds llama.cpp from source (cmake, a C++ compiler; flags in .ci/run).
    "server": ["llama-cpp-python[server]==0.3.36", "uvicorn==0.54.0", "fastapi==0.165.0", "sse-starlette==3.7.0",
               "starlette-context==0.3.6", "pydantic-settings==2.16.3", "starlette==1.10.0", "diskcache==5.6.3"],
}

setup(
    name="fiat_jax",
    version="0.1.0",
    description="Fusing in-context learning and parameter-efficient fine-tuning, JAX/TPU native.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["fiat_jax", "fiat_jax.*", "tasks", "tasks.*"]),
    package_data={"fiat_jax": ["teachers/recipes/*.txt"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["fiat=fiat_jax.cli:main"]},
)
