"""Whether output_dir outlives the container: inside one, a path that is not on a mounted volume lands in the
container's own writable layer (or a tmpfs), and the model and checkpoints go down with it while the run exits 0.
Read from the kernel's mount table (/proc/self/mountinfo), as `findmnt` does. A container is what this premise
needs: a root filesystem that is itself ephemeral (Docker's and containerd's overlay). A host, or a VM that merely
carries Docker's marker file, has a disk at its root, and a tmpfs there is the user's choice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Filesystems that live and die with the container: its image layers and memory-backed mounts.
EPHEMERAL_FILESYSTEMS = ("overlay", "aufs", "tmpfs", "ramfs", "devtmpfs", "shm")


@dataclass(frozen=True, kw_only=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    point: Path
    """Where it is mounted."""
    filesystem: str
    """Its type (ext4, xfs, nfs4, overlay, tmpfs...)."""


def read_mounts(mountinfo: str) -> list[Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        fields = before.split()
        if not sep or len(fields) < 5 or not after.split():
            continue
        point = fields[4].encode().decode("unicode_escape")  # the kernel writes a space as \040
        mounts.append(Mount(point=Path(point), filesystem=after.split()[0]))
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount a path lands on: the deepest mount point above it (the last one mounted there wins)."""
    found = None
    for mount in mounts:
        above = path == mount.point or mount.point in path.parents
        if above and (found is None or len(mount.point.parts) >= len(found.point.parts)):
            found = mount
    return found


def ephemeral_mount(path: Path, mountinfo: str) -> Mount | None:
    """The mount that `path` would be lost with inside a container, or None: it lands on a volume, or this is
    no container."""
    mounts = read_mounts(mountinfo)
    root = mount_of(Path("/"), mounts)
    if root is None or root.filesystem not in EPHEMERAL_FILESYSTEMS:
        return None
    mount = mount_of(path.resolve(), mounts)
    return mount if mount is not None and mount.filesystem in EPHEMERAL_FILESYSTEMS else None


def own_mount_table() -> str:
    try:
        return Path("/proc/self/mountinfo").read_text()
    except OSError:
        return ""  # not Linux: nothing to tell
