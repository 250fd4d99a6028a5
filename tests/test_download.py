"""`spotdiff.download`: resumable, verified downloads (against a local server with Range support) and
archive extraction that refuses members escaping the target, links and special files."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from helpers.http import md5_of
from spotdiff import download as fetching
from spotdiff.download import extract_archive
from spotdiff.errors import SpotdiffError

# ---------------------------------------------------------------- download


def test_download_resumes_a_partial_file_with_range(tmp_path, coco2017_server):
    url, root = coco2017_server.url, coco2017_server.root
    src = root / "zips" / "train2017.zip"
    dest = tmp_path / "train2017.zip"
    part = dest.with_name(dest.name + ".part")
    half = src.read_bytes()[: src.stat().st_size // 2]
    part.write_bytes(half)
    fetching.download(f"{url}/zips/train2017.zip", dest, md5_of(src))
    assert dest.read_bytes() == src.read_bytes()
    assert not part.exists()
    assert coco2017_server.requests[-1][1] == f"bytes={len(half)}-"


def test_download_with_wrong_md5_is_not_trusted(tmp_path, coco2017_server):
    url = coco2017_server.url
    dest = tmp_path / "a.zip"
    with pytest.raises(SpotdiffError, match="MD5 mismatch"):
        fetching.download(f"{url}/zips/train2017.zip", dest, "0" * 32)
    assert not dest.exists() and not dest.with_name("a.zip.part").exists()


def test_download_http_error_is_a_clear_error(tmp_path, coco2017_server):
    url = coco2017_server.url
    with pytest.raises(SpotdiffError, match="HTTP 404"):
        fetching.download(f"{url}/zips/nothing.zip", tmp_path / "n.zip")


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_extraction_refuses_paths_escaping_the_target(tmp_path, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(member, "evil")
    target = tmp_path / "target"
    with pytest.raises(SpotdiffError, match="would escape"):
        fetching.extract_archive(archive, target)
    assert not (tmp_path / "evil.txt").exists()
    assert not (target / "ok.txt").exists()  # all members are checked before any is written


def test_extract_refuses_traversal_and_links(tmp_path):
    evil_tar = tmp_path / "evil.tar"
    with tarfile.open(evil_tar, "w") as tf:
        info = tarfile.TarInfo("ok/../../escaped.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(SpotdiffError, match=r"evil\.tar: member .*escape"):
        extract_archive(evil_tar, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()

    link_tar = tmp_path / "link.tar"
    with tarfile.open(link_tar, "w") as tf:
        info = tarfile.TarInfo("data/annotations.npy")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(SpotdiffError, match=r"link\.tar: member .*link"):
        extract_archive(link_tar, tmp_path / "dest")

    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr("/abs/escaped.txt", "bad")
    with pytest.raises(SpotdiffError, match=r"evil\.zip: member"):
        extract_archive(evil_zip, tmp_path / "dest")
    assert not (tmp_path / "dest" / "fine.txt").exists()  # checked before anything is written
