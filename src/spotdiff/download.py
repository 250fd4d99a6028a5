"""Fetching data from the internet, in one place: resumable verified downloads and safe extraction.

`download` resumes a `.part` file with an HTTP Range request, checks the length the server announced
and the digest when one is given, and renames the file into place only then — a killed download is
resumed, never trusted. `extract_archive` unpacks zip or tar archives after checking every member:
absolute paths, `..` escapes, links and special files are refused before anything is written.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable

from tqdm import tqdm

from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import file_digest

CHUNK = 1 << 20


def download(url: str, dest: str | Path, digest: str = "", algorithm: str = "md5", hint: str = "check the URL",
             timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (resuming a previous `.part`); verify `digest` when given.

    `hint` names the setting a user should check when the server refuses (e.g. a params key).
    """
    dest = Path(dest)
    if dest.exists() and (not digest or file_digest(dest, algorithm) == digest.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked past the end: the part file is already complete
            response = None
        else:
            raise SpotdiffError(f"{url}: download failed (HTTP {exc.code}); {hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SpotdiffError(f"{url}: download failed ({getattr(exc, 'reason', exc)}); check the network "
                            f"or {hint.removeprefix('check ')}, then rerun to resume") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=f"download {dest.name}"
            ) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    fh.write(block)
                    bar.update(len(block))
            if total is not None and part.stat().st_size != total:
                raise SpotdiffError(f"{url}: got {part.stat().st_size} of {total} bytes; rerun to resume")
    if digest:
        got = file_digest(part, algorithm)
        if got != digest.lower():
            part.unlink()
            raise SpotdiffError(f"{url}: {algorithm.upper()} mismatch (expected {digest[:16]}…, got "
                                f"{got[:16]}…); the download was removed, rerun")
    os.replace(part, dest)
    return dest


def safe_member_path(root: Path, name: str, archive: Path) -> Path:
    """Where archive member `name` goes under `root`; refuse absolute paths and `..` escapes."""
    pure = PurePosixPath(name.replace("\\", "/"))
    escapes = pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0])
    target = (root / pure).resolve()
    if escapes or (target != root.resolve() and root.resolve() not in target.parents):
        raise SpotdiffError(f"{archive}: member {name!r} would escape the target folder; refusing to "
                            "extract this archive")
    return target


def extract_archive(archive: str | Path, dest: str | Path, names: Iterable[str] | None = None,
                    desc: str = "extract") -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) into `dest` (only `names`, when given).

    Every member is checked before any is written: escapes, links and special files are refused.
    Each file is written to a temporary sibling and renamed when complete; a corrupt archive (bad
    CRC, truncated, not an archive) raises SpotdiffError and removes every file this call wrote.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = None if names is None else list(names)
    written: list[Path] = []
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, wanted, desc, written)
        else:
            _extract_tar(archive, dest, wanted, desc, written)
    except SpotdiffError:
        _remove(written)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError,
            ValueError, NotImplementedError) as exc:
        _remove(written)
        if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.filename is not None:
            raise  # a write problem (disk full, ...) of ours: the command line names the file
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpotdiffError(f"{archive}: corrupt or truncated archive ({detail}); delete it and rerun to "
                            "download it again") from None


def _remove(paths: list[Path]) -> None:
    for p in reversed(paths):
        try:
            p.unlink()
        except OSError:
            pass


def _write_member(src, target: Path, written: list[Path]) -> None:
    tmp = target.with_name(f".{target.name}.part")
    try:
        with src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(tmp, target)
        written.append(target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _extract_zip(archive: Path, dest: Path, wanted: list[str] | None, desc: str, written: list[Path]) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist() if wanted is None else [_zip_member(zf, archive, n) for n in wanted]
        members = [(info, safe_member_path(dest, info.filename, archive)) for info in infos]
        for info, _ in members:
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise SpotdiffError(f"{archive}: member {info.filename!r} is a symbolic link; refusing "
                                    "to extract this archive")
        for info, target in tqdm(members, desc=desc, unit="file", disable=len(members) < 100):
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_member(zf.open(info), target, written)


def _extract_tar(archive: Path, dest: Path, wanted: list[str] | None, desc: str, written: list[Path]) -> None:
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError):
        raise SpotdiffError(f"{archive}: neither a zip nor a tar archive; delete it and rerun") from None
    with tf:
        if wanted is None:
            members = tf.getmembers()
        else:
            members = []
            for n in wanted:
                try:
                    members.append(tf.getmember(n))
                except KeyError:
                    raise SpotdiffError(f"{archive}: member {n} is missing; the archive is incomplete") from None
        checked = []
        for m in members:
            target = safe_member_path(dest, m.name, archive)
            if not (m.isfile() or m.isdir()):
                raise SpotdiffError(f"{archive}: member {m.name!r} is a link or special file; refusing "
                                    "to extract this archive")
            checked.append((m, target))
        for m, target in tqdm(checked, desc=desc, unit="file", disable=len(checked) < 100):
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None  # a regular file, checked above
            _write_member(src, target, written)


def _zip_member(zf: zipfile.ZipFile, archive: Path, name: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(name)
    except KeyError:
        raise SpotdiffError(f"{archive}: member {name} is missing; the archive is incomplete") from None
