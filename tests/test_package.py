"""The package as users get it: a wheel built from the checkout, installed (not editable) into a fresh virtual
environment, imported and started from a folder where the checkout is not importable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import httpx
import pytest
from setuptools import find_packages

from tests.test_app_hosted import free_port

ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "test-artifacts",
                                     ".venv", "scratch", "tests", "bench", "docs", "scripts", ".ci")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout, so the build leaves nothing in it; without build isolation, which would
    download setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"),
                    str(src)], check=True, capture_output=True, text=True)
    wheels = list((work / "dist").glob("huginn_studio-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_every_package_the_demo_model_and_the_page_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in find_packages(str(ROOT), include=["engine*", "app*"]):
        folder = package.replace(".", "/")
        modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob("*.py")}
        assert modules and modules <= names, f"{package}: missing {sorted(modules - names)}"
    assert "app/store/core.py" in names
    demo = {f"engine/assets/demo-model/{p.name}" for p in (ROOT / "assets" / "demo-model").iterdir() if p.is_file()}
    assert {"engine/assets/demo-model/config.json", "engine/assets/demo-model/model.safetensors"} <= demo
    assert demo <= names, sorted(demo - names)
    page = {f"app/assets/{p.name}" for p in (ROOT / "assets").iterdir() if p.suffix in (".css", ".js")}
    assert "app/assets/style.css" in page and page <= names, sorted(page - names)
    meta = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = meta.read(f"{dist_info}/entry_points.txt").decode()
    assert "huginn-studio = app.cli:main" in entry_points
    requires = meta.read(f"{dist_info}/METADATA").decode()
    for needed in ("psutil", "pandas", "gradio", "httpx"):
        assert f"Requires-Dist: {needed}" in requires


def site_dirs() -> list[str]:
    """The folders this interpreter imports installed packages from: its own (a virtual environment's, where torch
    may be installed and the base interpreter may have none), its base's, and any a .pth file added."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


def env_seeing_these_packages(env_dir: Path, base: str | None = None) -> Path:
    """A fresh virtual environment (of ``base``, else of this interpreter's base) that imports what this interpreter
    imports, without a download: its own site-packages first, then ours, listed in a .pth file (plain paths: the
    .pth files in them, an editable install's say, are not run)."""
    if base is None:
        venv.EnvBuilder(with_pip=False).create(env_dir)
    else:
        subprocess.run([base, "-m", "venv", "--without-pip", str(env_dir)], check=True, capture_output=True)
    python = env_dir / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    Path(own, "_huginn_test_site.pth").write_text("\n".join(site_dirs()) + "\n", encoding="utf-8")
    return python


@pytest.mark.slow
def test_installed_wheel_imports_and_serves_the_page_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # torch and the other dependencies as this interpreter has them (no downloads); the wheel goes into the venv.
    python = env_seeing_these_packages(env_dir)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, text=True)
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HUGINN_STUDIO_DB", "HUGINN_STUDIO_AUTH",
                                                             "HUGINN_STUDIO_DATA_DIR", "SPACE_ID", "SYSTEM")}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", GRADIO_ANALYTICS_ENABLED="False")
    probe = ("import engine, app, app.store, app.ui, app.resources; print(engine.__file__); print(app.__file__); "
             "print(engine.DEMO_MODEL); print(app.resources.ASSETS)")
    out = subprocess.run([str(python), "-c", probe], cwd=run_dir, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    site = env_dir.resolve()
    for path in out:
        assert Path(path).resolve().is_relative_to(site), f"{path} is not from the installed wheel"
    assert (Path(out[2]) / "model.safetensors").is_file() and (Path(out[3]) / "transcript.js").is_file()

    port = free_port()
    proc = subprocess.Popen([str(env_dir / "bin" / "huginn-studio"), "--port", str(port), "--model", "auto",
                             "--db", str(tmp_path / "c.db")], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "is running at" in line:
                break
        assert "is running at" in "".join(lines), "".join(lines)
        assert "demo model" in "".join(lines)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "Huginn Studio" in page.text
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=30).json()
        # The page's own stylesheet and transcript script came along from the wheel.
        assert (ROOT / "assets" / "style.css").read_text(encoding="utf-8")[:200] in config["css"]
        script = (ROOT / "assets" / "transcript.js").read_text(encoding="utf-8")
        assert any(script in (c.get("props", {}).get("js_on_load") or "") for c in config["components"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def interpreter_without_torch() -> str | None:
    """Another Python of this version that has no torch (Debian's, beside a pyenv one), if the machine has one."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}", shutil.which(version)):
        if not candidate or not Path(candidate).is_file():
            continue
        if Path(candidate).resolve() == Path(sys.executable).resolve():
            continue
        probe = subprocess.run([candidate, "-c", "import torch"], capture_output=True)
        if probe.returncode != 0:
            return candidate
    return None


@pytest.mark.slow
def test_the_wheel_test_passes_inside_a_virtual_environment(tmp_path):
    """As in a user's venv: torch and the rest installed in the venv, none of it in the base interpreter (where the
    machine has such a base; otherwise this interpreter's). The wheel test, run from that venv, must pass."""
    outer = env_seeing_these_packages(tmp_path / "user-venv", interpreter_without_torch())
    test = "tests/test_package.py::test_installed_wheel_imports_and_serves_the_page_outside_the_checkout"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(outer), "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
