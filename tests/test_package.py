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


@pytest.mark.slow
def test_installed_wheel_imports_and_serves_the_page_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # System site-packages for torch and the other dependencies (no downloads); the wheel itself goes into the venv.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
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
