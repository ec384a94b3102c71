"""The wheel users install: the prompt recipes ship inside it, and the pins name no package fiat_jax never uses."""
from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _setup_kwargs() -> tuple[list[str], dict[str, list[str]]]:
    tree = ast.parse((REPO / "setup.py").read_text())
    values = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and t.id in ("INSTALL_REQUIRES", "EXTRAS")}
    return values["INSTALL_REQUIRES"], values["EXTRAS"]


def _can_build_wheels_offline() -> bool:
    """setuptools >= 70.1 builds wheels by itself; older ones need the ``wheel`` package (no build isolation:
    the test must not download build tools)."""
    import importlib.util

    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_wheel_ships_the_recipes(tmp_path):
    if not _can_build_wheels_offline():
        pytest.skip("this venv's setuptools cannot build a wheel without downloading `wheel`")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "setup.py", src / "setup.py")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("fiat_jax", "tasks"):
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("fiat_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (REPO / "fiat_jax" / "teachers" / "recipes").glob("*.txt"))
    assert recipes, "no recipe files in the checkout"
    missing = [r for r in recipes if f"fiat_jax/teachers/recipes/{r}" not in names]
    assert not missing, f"recipes missing from the wheel: {missing}"
    assert "fiat_jax/teachers/recipes.py" in names and "fiat_jax/cli.py" in names


def test_package_data_patterns_match_files():
    """Every package_data glob in setup.py names at least one file (a stale glob ships nothing, silently)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"]
    (package_data,) = [ast.literal_eval(k.value) for k in call.keywords if k.arg == "package_data"]
    for package, patterns in package_data.items():
        for pattern in patterns:
            assert list((REPO / package).glob(pattern)), f"package_data {package}/{pattern} matches no file"


def test_qwix_is_a_benchmark_extra_and_unused_by_the_package():
    install, extras = _setup_kwargs()
    assert not any(r.startswith("qwix") for r in install)
    assert "qwix==0.1.8" in extras["benchmark"]
    users = [str(p.relative_to(REPO)) for p in (REPO / "fiat_jax").rglob("*.py")
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "qwix" in ast.unparse(n)
                    for n in ast.walk(ast.parse(p.read_text())))]
    assert users == [], f"fiat_jax imports qwix: {users}"


def test_accelerator_extras_match_the_jax_pin():
    install, extras = _setup_kwargs()
    jax_pin = next(r for r in install if r.startswith("jax=="))
    version = jax_pin.split("==")[1]
    assert f"jax-cuda12-plugin[with-cuda]=={version}" in extras["cuda"]
    assert f"jax-cuda12-pjrt=={version}" in extras["cuda"]
    assert f"jax[tpu]=={version}" in extras["tpu"]
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import tpu
    finally:
        sys.path.pop(0)
    assert tpu.INSTALL_EXTRA == ".[tpu]"  # the pods install what `pip install '.[tpu]'` installs
