"""Make the stand-in's Python packages look as NGC's do, next to the torch installed from the CPU wheel.

relabel-torch VERSION       torch gets NGC's kind of version, a pre-release with a local tag, which a
                            requirement such as `torch>=2.10` refuses; its code stays what was installed
metadata-only NAME VERSION  a distribution with metadata and no code: Transformer Engine and flash-attn cannot
                            run on a CPU, but their metadata proves an install never replaces them, and
                            `import` still finds no module, as on a machine without them
"""

import importlib.metadata
import sys
from pathlib import Path


def relabel_torch(new_version: str) -> None:
    dist = importlib.metadata.distribution("torch")
    old_version, info = dist.version, Path(dist._path)
    version_py = info.parent / "torch" / "version.py"
    version_py.write_text(version_py.read_text().replace(repr(old_version), repr(new_version)))
    metadata = info / "METADATA"
    metadata.write_text(metadata.read_text().replace(f"Version: {old_version}\n", f"Version: {new_version}\n", 1))
    (info / "direct_url.json").unlink(missing_ok=True)  # NGC's torch is built in place, not installed from a file
    record = info / "RECORD"
    record.write_text(record.read_text().replace(info.name, f"torch-{new_version}.dist-info"))
    info.rename(info.parent / f"torch-{new_version}.dist-info")


def metadata_only(name: str, version: str) -> None:
    site = Path(importlib.metadata.distribution("torch")._path).parent  # where the base's packages live
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("ngc-standin\n")
    (info / "RECORD").write_text("")


if __name__ == "__main__":
    {"relabel-torch": relabel_torch, "metadata-only": metadata_only}[sys.argv[1]](*sys.argv[2:])
    print(f"{' '.join(sys.argv[1:])}: done")
