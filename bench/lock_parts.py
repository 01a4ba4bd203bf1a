"""Helpers of bench/image_on_gpu.sh, which carries the image's locked wheels to the GPU machine.

differing FREEZE  the [image] section of docker/requirements.lock, less the pins FREEZE already holds at the
                  locked version (`pip list --format=freeze` on the GPU machine)
split DIR         spread DIR's files over DIR/part1, part2, ... of at most 60 MB each (a call carries 64 MiB,
                  the repository included), largest first, each into the first part with room
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docker"))
from install import LOCK, canonical, read_lock  # noqa: E402  (the image's own reader of the lock)

PART_BYTES = 60e6


def differing(freeze: str) -> None:
    there = dict(line.strip().split("==", 1) for line in Path(freeze).read_text().splitlines() if "==" in line)
    there = {canonical(name): version for name, version in there.items()}
    for name, (version, requirement) in read_lock(LOCK, ["image"]).items():
        if there.get(name) != version:
            print(requirement)


def split(folder: str) -> None:
    parts: list[list] = []
    for wheel in sorted(Path(folder).glob("*.*"), key=lambda f: -f.stat().st_size):
        size = wheel.stat().st_size
        part = next((p for p in parts if p[0] + size <= PART_BYTES), None)
        if part is None:
            parts.append(part := [0, []])
        part[0] += size
        part[1].append(wheel)
    for number, (size, wheels) in enumerate(parts, 1):
        (Path(folder) / f"part{number}").mkdir()
        for wheel in wheels:
            wheel.rename(wheel.parent / f"part{number}" / wheel.name)
        print(f"{folder}/part{number}: {len(wheels)} files, {size / 1e6:.0f} MB")


if __name__ == "__main__":
    {"differing": differing, "split": split}[sys.argv[1]](sys.argv[2])
