"""Test set-up: 8 fake CPU devices for mesh tests, set before anything imports jax.

On a host with an NVIDIA GPU and jax's CUDA plugin (``pip install -e '.[cuda]'``) jax is left to pick the GPU,
and the mesh and train tests take the device count from the machine (tests/device_meshes.py).
``FIAT_TEST_PLATFORM=cpu`` keeps the fake CPU devices there too."""
import importlib.util
import os


def _gpu_at_hand() -> bool:
    if os.environ.get("FIAT_TEST_PLATFORM", "").lower() == "cpu":
        return False
    has_device = os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")
    return has_device and importlib.util.find_spec("jax_cuda12_plugin") is not None


if not _gpu_at_hand():
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite's programs go to one shared test cache (as test_train_helpers.JAX_CACHE_ENV), not the user's.
os.environ.setdefault("FIAT_JAX_COMPILE_CACHE", os.environ.get("FIAT_TEST_JAX_CACHE", "/tmp/fiat_jax_test_jax_cache"))

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The real data sets in ../shared/data (skip when the checkout has none beside it)."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"no shared data at {path}")
    return path


@pytest.fixture(autouse=True)
def _clear_gin():
    """Each test starts from an unlocked, empty gin config."""
    import gin

    gin.clear_config(clear_constants=True)
    yield
    gin.clear_config(clear_constants=True)
