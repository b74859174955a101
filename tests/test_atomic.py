"""Atomic files and folders (curation.atomic), through the commands that write them: a folder that
holds the user's files is never replaced, a linked --out is refused, leftovers are the writer's
own, and what is written follows the umask."""

from __future__ import annotations

import os

import pytest

from curation.atomic import AtomicError, atomic_dir
from tests.synthetic import make_selection


def test_export_and_select_never_delete_a_folder_holding_other_files(tmp_path, run_cli):
    run, sel = make_selection(tmp_path)
    for command, folder, marker in (("export", tmp_path / "site", "manifest.json"),
                                    ("select", tmp_path / "mine", "recipe.yaml")):
        (folder / "icons").mkdir(parents=True)
        (folder / marker).write_text("{}")
        (folder / "index.html").write_text("<html>mine</html>")
        (folder / "icons" / "a.png").write_bytes(b"png")
        args = [str(sel), "--out", str(folder)] if command == "export" else \
            [str(run), "--method", "loss", "--budget", "5", "--out", str(folder)]
        r = run_cli(command, *args)
        assert r.returncode == 2 and "holds 2 entries a" in r.stderr and "icons, index.html" in r.stderr, r.stderr
        assert (folder / "index.html").read_text() == "<html>mine</html>" and (folder / "icons" / "a.png").is_file()
    # A folder that is entirely a previous export is replaced as before.
    assert run_cli("export", str(sel), "--out", str(tmp_path / "e")).returncode == 0
    assert run_cli("export", str(sel), "--out", str(tmp_path / "e"), "--format", "parquet").returncode == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["README.md", "manifest.json", "train.parquet"]


def test_a_linked_out_is_refused_and_old_leftovers_lose_only_the_link(tmp_path, run_cli):
    from curation.export.writer import ExportConfig, export_selection

    run, sel = make_selection(tmp_path)
    target = export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "v1")))
    link = tmp_path / "latest"
    link.symlink_to(target)
    r = run_cli("export", str(sel), "--out", str(link))
    assert r.returncode == 2 and "is a symbolic link" in r.stderr, r.stderr
    assert link.is_symlink() and (target / "manifest.json").is_file()
    # An earlier version's leftover: the link renamed aside by a process that is gone.
    stale = tmp_path / ".latest.999999-abcd1234.old"
    stale.symlink_to(target)
    notes = []
    export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "latest2")), notes=notes)
    export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "other")), notes=notes)
    assert not any(".latest" in n for n in notes)  # only leftovers of the same --out are touched
    (tmp_path / "latest").unlink()
    export_selection(ExportConfig(selection=str(sel), out=str(tmp_path / "latest")), notes=notes)
    assert not stale.exists() and not stale.is_symlink() and (target / "manifest.json").is_file()
    assert any(".latest.999999" in n for n in notes)


def test_written_files_follow_the_umask(tmp_path):
    from curation.atomic import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("what, article", [("export", "an"), ("selection", "a")])
def test_a_folder_with_foreign_entries_is_refused_in_plain_english(tmp_path, what, article):
    """Issue 30 #15: the message said "a export"."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AtomicError, match=f"holds 1 entry {article} {what} does not write \\(notes.txt\\)"):
        with atomic_dir(out, marker="marker.json", what=what, known=("marker.json",)):
            pass
    assert (out / "notes.txt").read_text() == "mine"
