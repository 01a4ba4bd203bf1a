"""Fetch the pinned LLaMA-Factory's source archive from PyPI, check it against docker/requirements.lock, and unpack
the two folders its wheel does not ship: `data/` (its demo datasets and their dataset_info.json, under the names its
users know) and `examples/` (its example YAMLs, our test corpus).

The archive file itself is fetched and hashed: `pip download --no-binary` would run its build backend, which no
hash covers. Standard library only, as docker/install.py. Run again, it does nothing where DEST already holds the
locked archive's folders (no network needed).

    python3 docker/llamafactory_sdist.py DEST
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import ssl
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath

from install import LOCK, read_lock

INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691: the index as JSON, with each file's URL
FOLDERS = ("data", "examples")
RECORD = "sdist.json"  # which archive DEST was unpacked from


def locked_llamafactory(lock: Path) -> tuple[str, set[str]]:
    """The pinned version and the sha256 of every file PyPI has for it (the wheel and the archive)."""
    version, requirement = read_lock(lock, ["image"])["llamafactory"]
    return version, {line.split("sha256:", 1)[1].rstrip(" \\") for line in requirement.splitlines()[1:]}


def tls() -> ssl.SSLContext:
    """The CA bundle pip is told to trust, where one is set (the stand-in's builds reach PyPI only through it)."""
    return ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)


def archive_url(filename: str) -> str:
    request = urllib.request.Request(f"{INDEX}/llamafactory/", headers={"Accept": SIMPLE_JSON})
    with urllib.request.urlopen(request, timeout=60, context=tls()) as response:
        files = json.load(response)["files"]
    urls = [entry["url"] for entry in files if entry["filename"] == filename]
    if not urls:
        raise SystemExit(f"llamafactory_sdist: {INDEX} has no {filename}")
    return urls[0]


def fetch(filename: str, hashes: set[str], lock: Path) -> tuple[bytes, str]:
    with urllib.request.urlopen(archive_url(filename), timeout=300, context=tls()) as response:
        archive = response.read()
    digest = hashlib.sha256(archive).hexdigest()
    if digest not in hashes:
        raise SystemExit(f"llamafactory_sdist: {filename} has sha256 {digest}, which {lock} does not list")
    return archive, digest


def unpack(archive: bytes, top: str, into: Path) -> None:
    """Regular files under `top/data/` and `top/examples/` only; a member that would land outside `into` stops it."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if len(parts) < 3 or parts[0] != top or parts[1] not in FOLDERS or not member.isfile():
                continue
            if ".." in parts:
                raise SystemExit(f"llamafactory_sdist: refusing a member outside its folder: {member.name}")
            target = into.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


def main(dest: Path, lock: Path = LOCK) -> None:
    version, hashes = locked_llamafactory(lock)
    filename = f"llamafactory-{version}.tar.gz"
    record = dest / RECORD
    if record.is_file() and json.loads(record.read_text()).get("sha256") in hashes:
        print(f"llamafactory_sdist: {dest} already holds {filename}'s {' and '.join(FOLDERS)}")
        return
    archive, digest = fetch(filename, hashes, lock)
    dest.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)  # written last: a run cut short leaves no record, and the next one unpacks again
    with tempfile.TemporaryDirectory(dir=dest) as unpacked:
        unpack(archive, f"llamafactory-{version}", Path(unpacked))
        for folder in FOLDERS:
            shutil.rmtree(dest / folder, ignore_errors=True)
            (Path(unpacked) / folder).rename(dest / folder)
    record.write_text(json.dumps({"file": filename, "sha256": digest, "version": version}, indent=2) + "\n")
    print(f"llamafactory_sdist: {filename} (sha256 {digest[:12]}..., as locked) unpacked into {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.rstrip().rsplit("\n", 1)[-1].strip())
    main(Path(sys.argv[1]))
