"""The arm64 root builder's own logic, without building a root (fast)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import piroot  # noqa: E402


def test_the_mirror_is_the_one_this_machines_apt_uses_deb822_or_one_line(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert piroot.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://ftp.example.org/debian bookworm main\n")
    assert piroot.debian_mirror(tmp_path) == "http://ftp.example.org/debian"
    (tmp_path / "sources.list").write_text("# nothing\n")
    assert piroot.debian_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_the_pi_steps_are_the_readmes_pi_block_without_comments(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n```bash\nnot this\n```\n## On a Raspberry Pi (64-bit)\n\ntext\n\n```bash\n"
                      "sudo apt install a b   # why\n# a comment\n./setup.sh --runtime\n```\n```bash\nnor this\n```\n")
    assert piroot.pi_steps(readme) == ["sudo apt install a b", "./setup.sh --runtime"]


def test_the_repositorys_readme_has_the_steps_ci_runs():
    steps = piroot.pi_steps()
    assert steps[0].startswith("sudo apt install python3-picamera2 ")
    assert "./setup.sh --runtime" in steps
    assert any(step.startswith("git clone ") for step in steps)


def test_the_cached_root_changes_with_the_lock_setup_and_steps(monkeypatch, tmp_path):
    key = piroot.pi_key()
    monkeypatch.setattr(piroot, "pi_steps", lambda: ["sudo apt install something-else"])
    assert piroot.pi_key() != key
