"""Safe extraction, tested with crafted archives of the kinds an attacker or a broken mirror serves."""
import io
import os
import tarfile
import zipfile

import pytest

from suite.archives import MARKER, extract
from suite.errors import DataError


def make_tar(path, members):
    """members: (TarInfo, bytes | None) pairs."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, data=b"x", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, data if kind == tarfile.REGTYPE else None


def test_a_good_archive_extracts_once(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", [member("aclImdb/train/pos/0_9.txt", b"great film"),
                                                member("aclImdb/imdb.vocab", b"the\n")])
    target = extract(archive, tmp_path / "out")
    assert (target / "aclImdb/train/pos/0_9.txt").read_bytes() == b"great film" and (target / MARKER).exists()
    archive.write_bytes(b"not an archive any more")
    assert extract(archive, tmp_path / "out") == target  # the marker says done: not unpacked again


@pytest.mark.parametrize("bad", [
    member("../escape.txt"),
    member("data/link", kind=tarfile.SYMTYPE, link="/etc/passwd"),
    member("data/link", kind=tarfile.SYMTYPE, link="../../outside"),
    member("data/hard", kind=tarfile.LNKTYPE, link="../../etc/passwd"),
    member("data/dev", kind=tarfile.CHRTYPE),
])
def test_escaping_members_and_device_files_are_refused(tmp_path, bad):
    archive = make_tar(tmp_path / "evil.tar.gz", [member("data/fine.txt"), bad])
    with pytest.raises(DataError, match=r"refusing to extract .*evil.tar.gz: .*delete .*evil.tar.gz"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.tar.gz"]  # no staging folder left behind


def test_absolute_names_land_inside_the_target(tmp_path):
    archive = make_tar(tmp_path / "abs.tar.gz", [member("/tmp/seqsuite-absolute.txt", b"z")])
    target = extract(archive, tmp_path / "out")
    assert (target / "tmp/seqsuite-absolute.txt").read_bytes() == b"z"  # the filter strips the leading slash
    assert not os.path.exists("/tmp/seqsuite-absolute.txt")


def test_zip_escapes_and_links_are_refused(tmp_path):
    good = tmp_path / "ok.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("Flickr8k_text/captions.txt", "a dog runs")
    assert (extract(good, tmp_path / "zip-out") / "Flickr8k_text/captions.txt").read_text() == "a dog runs"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(DataError, match="outside the target directory"):
        extract(evil, tmp_path / "evil-out")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="is a symbolic link"):
        extract(link, tmp_path / "link-out")


def test_truncated_and_foreign_files_fail_with_the_fix(tmp_path):
    archive = make_tar(tmp_path / "ok.tar.gz", [member("a.txt", os.urandom(100_000))])
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot extract .*ok.tar.gz .*run again to download it afresh"):
        extract(archive, tmp_path / "out")
    text = tmp_path / "plain.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="neither a tar nor a zip archive"):
        extract(text, tmp_path / "out2")


def test_two_processes_extracting_at_once_both_get_one_finished_extraction(tmp_path):
    """Runs started side by side (suite sweep --workers 2) on a fresh data dir: one extracts, the other waits
    for it instead of deleting the tree the first is using."""
    import subprocess
    import sys

    source = tmp_path / "src"
    for i in range(300):
        (source / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (source / f"d{i % 10}" / f"f{i}.txt").write_text("x" * 2000)
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="data")
    code = (f"from pathlib import Path; from suite.archives import extract; "
            f"print(len(list(extract(Path({str(archive)!r}), Path({str(tmp_path / 'out')!r})).rglob('*.txt'))))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [o.strip() for o, _ in outputs] == ["300", "300"]
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind
