"""Inside a container, an output_dir that is not on a mounted volume is refused before anything loads: its model
and checkpoints would go down with the container while the run exits 0. The mount table is the kernel's; these
lines are the shape Docker gives a container with compose's bind mounts (the container tests run the real one)."""

from pathlib import Path

import pytest
from llamafactory_fp8 import inspection
from llamafactory_fp8.errors import OutputNotOnVolume
from llamafactory_fp8.volumes import ephemeral_mount

from .conftest import model_dir

DOCKER_MOUNTS = """\
1021 987 0:190 / / rw,relatime master:351 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/A,upperdir=B
1022 1021 0:194 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1025 1021 0:196 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
1030 1021 254:1 /home/me/project/outputs /workspace/outputs rw,relatime - ext4 /dev/vda1 rw
1031 1021 254:1 /home/me/project/saves /workspace/saves rw,relatime - ext4 /dev/vda1 rw
1032 1021 0:45 / /workspace/my\\040data rw,relatime - nfs4 server:/export rw
1033 1021 0:46 / /tmp rw,relatime - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    "path, lost_with",
    [
        ("/workspace/saves/qwen-7b-fp8", None),
        ("/workspace/outputs/demo", None),
        ("/workspace/my data/run", None),
        ("/workspace/saves", None),
        ("/workspace/savesx/run", "/"),  # a sibling of the mount, not under it
        ("/workspace/other/run", "/"),
        ("/tmp/run", "/tmp"),
    ],
)
def test_a_path_is_lost_unless_a_volume_holds_it(path, lost_with):
    mount = ephemeral_mount(Path(path), DOCKER_MOUNTS)
    assert (mount and str(mount.point)) == lost_with


def test_a_users_run_off_every_volume_is_refused_in_one_line_naming_the_mount_to_add(planner, tmp_path, monkeypatch):
    table = f"1 0 0:1 / / rw - overlay overlay rw\n2 1 0:2 / {tmp_path / 'kept'} rw - ext4 /dev/vda rw\n"
    monkeypatch.setattr(inspection, "own_mount_table", lambda: table)
    keys = {"model_name_or_path": str(model_dir("qwen2.5-0.5b")), "stage": "sft", "finetuning_type": "lora"}
    with pytest.raises(OutputNotOnVolume, match="is not on a mounted volume") as refusal:
        planner("no-gpu", keys, allow_cpu=True)
    assert "mount a volume there" in str(refusal.value) and "\n" not in str(refusal.value)
    planner("no-gpu", {**keys, "output_dir": str(tmp_path / "kept" / "run")}, allow_cpu=True)


def test_a_host_with_a_disk_at_its_root_is_no_container():
    """This very machine carries Docker's /.dockerenv but runs on ext4: a tmpfs there is the user's choice."""
    host = "1 0 254:0 / / rw - ext4 /dev/vda rw\n2 1 0:3 / /tmp rw - tmpfs tmpfs rw\n"
    assert ephemeral_mount(Path("/tmp/run"), host) is None
