"""Write docker/requirements.lock: every Python package the image and CI add, pinned, with hashes.

Run through `scripts/lock`, which hands it a bare throwaway venv to resolve for. CI's torch goes into that venv
first, as an NGC base holds its own: pip's resolver then reports what must be added on top of a torch that stays.
Each pin carries the sha256 of every file PyPI has for that version, so the one lock serves CI's Python and the
base's (3.12 on NGC).

Sections, read by docker/install.py:
  image  what docker/Dockerfile adds to its base: docker/requirements*.in and this package's dependencies
  ci     what CI adds on top: its torch (with what torch needs) and the test tools from pyproject's `test` extra
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "docker" / "requirements.lock"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def main(target_python: str, torch_spec: str) -> None:
    """`target_python`: the venv resolved for, apart from the one running this script (pip's --python)."""
    pip = [sys.executable, "-m", "pip", "--python", target_python]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = resolve(pip, [torch_spec], ignore_installed=True)
    install(pip, base)  # the stand-in for the base's torch: kept by every resolution below
    image = resolve(pip, ["-r", str(ROOT / "docker" / "requirements.in"), *project["dependencies"]])
    image |= pins_of(ROOT / "docker" / "requirements-nodeps.in")
    ci = resolve(pip, project["optional-dependencies"]["test"], constraints=image)
    ci |= {name: pin for name, pin in base.items() if name not in image}
    LOCK.write_text(render(torch_spec, {"image": image, "ci": {n: p for n, p in ci.items() if n not in image}}))
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(image)} image and {len(ci)} CI packages")


def resolve(
    pip: list[str], requirements: list[str], ignore_installed: bool = False, constraints: dict | None = None
) -> dict:
    """What pip would install for `requirements` into the target venv: {name: (version, url, sha256 or None)}."""
    command = [*pip, "install", "--dry-run", "--quiet", "--no-build-isolation", "--report", "-"]
    if ignore_installed:
        command.append("--ignore-installed")
    if constraints:
        pinned = ROOT / "build" / "lock-constraints.txt"
        pinned.parent.mkdir(exist_ok=True)
        pinned.write_text("".join(f"{name}=={version}\n" for name, (version, _, _) in constraints.items()))
        command += ["-c", str(pinned)]
    report = json.loads(subprocess.run(command + requirements, check=True, capture_output=True, text=True).stdout)
    return {
        canonicalize_name(item["metadata"]["name"]): (
            item["metadata"]["version"],
            item["download_info"]["url"],
            item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256"),
        )
        for item in report["install"]
    }


def install(pip: list[str], pins: dict) -> None:
    urls = [url for _, url, _ in pins.values()]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", *urls], check=True)


def pins_of(path: Path) -> dict:
    """Exact pins written by hand (name==version), looked up on the index like the resolved ones."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (version,) = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            pins[canonicalize_name(requirement.name)] = (version, None, None)
    return pins


def hashes(name: str, version: str, url: str | None, known: str | None) -> list[str]:
    """Every file of this version on PyPI, wherever pip found it (this machine may mirror some locally); a
    version PyPI does not have (CI's `+cpu` torch) by the hash of the file pip found."""
    request = urllib.request.Request(f"https://pypi.org/simple/{name}/", headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    found = sorted(
        f["hashes"]["sha256"] for f in files if _version_of(f["filename"]) == version and not f.get("yanked")
    )
    if found:
        return found
    if url and url.startswith("file:"):
        return [known or hashlib.sha256(Path(unquote(urlparse(url).path)).read_bytes()).hexdigest()]
    raise SystemExit(f"lock: no files for {name}=={version} on PyPI")


def _version_of(filename: str) -> str | None:
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except ValueError:
        return None


def render(torch_spec: str, sections: dict[str, dict]) -> str:
    lines = [
        "# Generated by scripts/lock from docker/requirements.in, docker/requirements-nodeps.in and pyproject.toml;",
        "# do not edit. Installed by docker/install.py, without dependencies and checking every hash.",
        f"# Resolved with CPython {sys.version_info.major}.{sys.version_info.minor} over {torch_spec}.",
    ]
    for section, pins in sections.items():
        lines += ["", f"# [{section}]"]
        for name in sorted(pins):
            version, url, known = pins[name]
            lines.append(f"{name}=={version} \\")
            lines += [f"    --hash=sha256:{digest} \\" for digest in hashes(name, version, url, known)]
            lines[-1] = lines[-1].removesuffix(" \\")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
