"""Install sections of docker/requirements.lock over the Python environment's own torch, then patch LLaMA-Factory.

The image (on an NGC PyTorch base), CI's venv (scripts/bootstrap) and the GPU machine all run this one script
over the one lock: every package is installed at its locked version, without dependencies, each file checked
against its hash. What the environment already has is never replaced where it belongs to the base:

  --keep-installed   keep every distribution already installed (an image on its base)
  (default)          bring installed distributions to the lock (a venv made by bootstrap), except those in
                     ALWAYS_KEPT, which only the environment's maker may change

Either way the install fails if torch, Transformer Engine, flash-attn or a torchao it kept changed, and if
`pip check` finds a locked package's requirement broken. Standard library only: bases differ in what else they have.

    python3 docker/install.py [--keep-installed] [--target DIR] [--record FILE] SECTION... [-- PIP_ARGS...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LOCK = PROJECT / "docker" / "requirements.lock"
NODEPS = PROJECT / "docker" / "requirements-nodeps.in"  # locked, but installed without what they declare
PATCHES = PROJECT / "patches"
ALWAYS_KEPT = ("torch", "transformer-engine", "flash-attn")  # the base's CUDA builds; no lock may replace them
# DeepSpeed ships only a source archive, whose build imports torch and needs a setuptools that builds wheels: built
# without isolation (an isolated build would fetch a torch of its own), after these are in place.
BUILT_AGAINST = ("torch", "setuptools")
_SECTION = re.compile(r"^# \[(?P<name>[\w-]+)\]$")
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")


def canonical(name: str) -> str:
    """PEP 503 normalisation, as pip compares names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_guarded(name: str) -> bool:
    return any(name == kept or name.startswith(f"{kept}-") for kept in ALWAYS_KEPT)


def read_lock(path: Path, sections: list[str]) -> dict[str, tuple[str, str]]:
    """{name: (version, requirement text with its hashes)} for the chosen sections."""
    chosen, seen, section, current = {}, set(), None, None
    for line in path.read_text().splitlines():
        heading = _SECTION.match(line)
        if heading:
            section = heading["name"]
            seen.add(section)
            continue
        pin = _PIN.match(line)
        if pin:
            current = canonical(pin["name"])
            if section in sections:
                chosen[current] = (pin["version"], line)
        elif line.startswith("    --hash=") and current in chosen:
            chosen[current] = (chosen[current][0], f"{chosen[current][1]}\n{line}")
    missing = sorted(set(sections) - seen)
    if missing:
        raise SystemExit(f"install: no section {', '.join(missing)} in {path}")
    return chosen


def installed_versions(search_path: list[str]) -> dict[str, str]:
    found = {}
    for distribution in importlib.metadata.distributions(path=search_path):
        found.setdefault(canonical(distribution.metadata["Name"]), distribution.version)
    return found


def plan(lock: dict, installed: dict, keep_installed: bool) -> tuple[dict, dict]:
    """(to install, kept): kept holds what stays at a version other than the lock's, with that version."""
    to_install, kept = {}, {}
    for name, (version, requirement) in lock.items():
        have = installed.get(name)
        if have is None or (have != version and not keep_installed and not is_guarded(name)):
            to_install[name] = (version, requirement)
        elif have != version:
            kept[name] = have
    return to_install, kept


def pip(args: list[str], env: dict) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def check_requirements(env: dict, lock: dict, kept: dict[str, str]) -> list[str]:
    """`pip check` over what the lock holds. Fatal: a locked package's requirement that nothing meets, except what
    requirements-nodeps.in leaves out on purpose. Returned, to be reported: a requirement that a package kept from
    the base does not meet (an upper bound the base outgrew), and the requirements of packages outside the lock
    (the base's own business)."""
    found = subprocess.run([sys.executable, "-m", "pip", "check"], env=env, capture_output=True, text=True).stdout
    without_deps = {canonical(line.split("==")[0]) for line in NODEPS.read_text().splitlines() if "==" in line}
    reported, broken = [], []
    for line in filter(None, found.splitlines()):
        words = line.split()
        subject = canonical(words[0])
        if subject in without_deps and line.endswith("which is not installed."):
            continue
        outgrown = "but you have" in line and canonical(words[-2]) in kept
        (reported if subject not in lock or outgrown else broken).append(line)
    if broken:
        raise SystemExit("install: broken requirements after installing:\n" + "\n".join(broken))
    return reported


def llamafactory_patches(version: str) -> list[Path]:
    """Our fixes to the pinned LLaMA-Factory release. A pin without its folder stops the install before anything
    is installed: a new release must be checked against each fix (patches/README.md), never run without them."""
    folder = PATCHES / f"llamafactory-{version}"
    if not folder.is_dir():
        raise SystemExit(
            f"install: no patches for the pinned llamafactory {version}: {folder.relative_to(PROJECT)} is missing "
            "(patches/README.md says how to carry the fixes to a new release)"
        )
    return sorted(folder.glob("*.patch"))


def apply_patches(site_packages: Path, patches: list[Path]) -> None:
    """Each applied once (a rerun finds them applied)."""
    for change in patches:
        applied = subprocess.run(
            ["patch", "--dry-run", "--reverse", "--force", "--silent", "-p1", "-d", str(site_packages)],
            stdin=change.open(),
            capture_output=True,
        )
        if applied.returncode == 0:
            print(f"install: already applied {change.name}")
            continue
        subprocess.run(["patch", "--forward", "-p1", "-d", str(site_packages)], stdin=change.open(), check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="+", help="lock sections to install (image, ci)")
    parser.add_argument("--keep-installed", action="store_true", help="keep every distribution already installed")
    parser.add_argument("--target", type=Path, help="install into this folder (pip --target) instead")
    parser.add_argument("--record", type=Path, help="write what was installed and what was kept here, as JSON")
    parser.add_argument("--lock", type=Path, default=LOCK)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, pip_args = parser.parse_args(argv[:split]), argv[split + 1 :]

    env = dict(os.environ)
    search_path = sys.path
    if args.target:
        args.target.mkdir(parents=True, exist_ok=True)
        search_path = [str(args.target), *sys.path]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.target), env.get("PYTHONPATH")]))
    lock = read_lock(args.lock, args.sections)
    patches = llamafactory_patches(lock["llamafactory"][0]) if "llamafactory" in lock else []
    before = installed_versions(search_path)
    to_install, kept = plan(lock, before, args.keep_installed)

    target = ["--target", str(args.target), "--upgrade"] if args.target else []
    build_first = [requirement for name, (_, requirement) in to_install.items() if name in BUILT_AGAINST]
    rest = [requirement for name, (_, requirement) in to_install.items() if name not in BUILT_AGAINST]
    for requirements in filter(None, (build_first, rest)):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as listed:
            listed.write("\n".join(requirements) + "\n")
            listed.flush()
            pip(
                [
                    "install",
                    "--no-deps",
                    "--require-hashes",
                    "--no-build-isolation",
                    *target,
                    "-r",
                    listed.name,
                    *pip_args,
                ],
                env,
            )

    after = installed_versions(search_path)
    protected = [name for name in before if is_guarded(name) or (name == "torchao" and name not in to_install)]
    changed = [f"{name} {before[name]} -> {after.get(name)}" for name in protected if after.get(name) != before[name]]
    if changed:
        raise SystemExit(f"install: the base's own packages changed: {', '.join(changed)}")
    wrong = [
        f"{name} {after.get(name)} (lock {version})"
        for name, (version, _) in to_install.items()
        if after.get(name) != version
    ]
    if wrong:
        raise SystemExit(f"install: installed versions differ from the lock: {', '.join(wrong)}")

    if "llamafactory" in lock:
        site = args.target or Path(importlib.metadata.distribution("llamafactory").locate_file(""))
        apply_patches(site, patches)
    reported = check_requirements(env, lock, kept)
    for line in reported:
        print(f"install: note: {line}")
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        record = {"installed": {n: v for n, (v, _) in to_install.items()}, "kept": kept, "pip_check": reported}
        args.record.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(
        f"install: {len(to_install)} installed from {args.lock.name} ({', '.join(args.sections)}), {len(kept)} kept: "
        + (", ".join(f"{n} {v}" for n, v in sorted(kept.items())) or "none")
    )


if __name__ == "__main__":
    main()
