"""LLaMA-Factory's source archive (docker/llamafactory_sdist.py): its data/ and examples/ come only from the file
the lock names by hash. Fetches from PyPI; skipped, saying why, where PyPI cannot be reached."""

import json
import sys
import urllib.error

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "docker"))  # as the script runs, beside install.py
import llamafactory_sdist  # noqa: E402


def locked_lines() -> list[str]:
    lock = (ROOT / "docker" / "requirements.lock").read_text().splitlines()
    start = next(i for i, line in enumerate(lock) if line.startswith("llamafactory=="))
    end = next(i for i in range(start + 1, len(lock)) if not lock[i].startswith("    --hash="))
    return lock[start:end]


def run(dest, lock):
    try:
        llamafactory_sdist.main(dest, lock)
    except urllib.error.URLError as error:
        pytest.skip(f"PyPI cannot be reached: {error.reason}")


def test_an_archive_the_lock_does_not_list_is_refused_and_nothing_is_unpacked(tmp_path):
    pin = locked_lines()[0].removesuffix(" \\")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# [image]\n{pin} \\\n    --hash=sha256:{'0' * 64}\n")
    with pytest.raises(SystemExit) as refused:
        run(tmp_path / "lf", lock)
    filename = f"llamafactory-{pin.split('==')[1]}.tar.gz"
    assert str(refused.value).startswith(f"llamafactory_sdist: {filename} has sha256 ")
    assert str(refused.value).endswith(f", which {lock} does not list")
    assert not (tmp_path / "lf").exists()


def test_the_locked_archive_unpacks_llamafactorys_data_and_examples_and_a_rerun_keeps_them(tmp_path, capsys):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# [image]\n" + "\n".join(locked_lines()) + "\n")
    dest = tmp_path / "lf"
    run(dest, lock)
    assert sorted(path.name for path in dest.iterdir()) == ["data", "examples", "sdist.json"]
    info = json.loads((dest / "data" / "dataset_info.json").read_text())
    assert (dest / "data" / info["alpaca_en_demo"]["file_name"]).is_file()
    assert any((dest / "examples").rglob("*.yaml"))
    recorded = json.loads((dest / "sdist.json").read_text())
    capsys.readouterr()
    run(dest, lock)
    assert capsys.readouterr().out.endswith("already holds " + recorded["file"] + "'s data and examples\n")
