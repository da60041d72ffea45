"""Download HAM10000 from its official Harvard Dataverse record into Kaggle's folder layout.

``download_ham10000(dest)`` reads the record doi:10.7910/DVN/DBW86T through the Dataverse native API,
fetches the metadata table and both image archives (resumable ``.part`` files, size and MD5 checks) and
unpacks them so ``dest`` holds ``HAM10000_metadata.csv``, ``HAM10000_images_part_1/`` and
``HAM10000_images_part_2/`` like Kaggle's ``skin-cancer-mnist-ham10000``.
With ``--include-test`` the ISIC 2018 Task 3 test set goes into its own folder beside ``dest``.
Command line: ``python -m helpers.download [dest] [--include-test]``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from helpers.paths import DATA_DIR

DATAVERSE_URL = "https://dataverse.harvard.edu"
DOI = "doi:10.7910/DVN/DBW86T"
DEFAULT_DEST = DATA_DIR / "HAM10000"
CORE_FILES = ("HAM10000_metadata.tab", "HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip")
TEST_FILES = ("ISIC2018_Task3_Test_Images.zip", "ISIC2018_Task3_Test_GroundTruth.csv")
TEST_DIR_NAME = "ISIC2018_Task3_Test"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WORK_DIR_NAME = ".download"
_TABLE_SUFFIXES = ("", ".tab", ".csv")
_CHUNK = 1 << 20
_HEADERS = {"User-Agent": "dermsep-ham10000-downloader (python-urllib)"}


class DownloadError(RuntimeError):
    """The download failed; the message says why and how to install the data by hand."""


def download_ham10000(
    dest: str | Path = DEFAULT_DEST,
    *,
    base_url: str = DATAVERSE_URL,
    timeout: float = 10.0,
    files: Sequence[str] | None = None,
    include_test: bool = False,
    test_dest: str | Path | None = None,
) -> Path:
    """Download and unpack HAM10000 into ``dest`` (Kaggle layout) and return ``dest``.

    ``files`` names record files to fetch (default: metadata + both image archives). ``include_test`` also
    fetches the ISIC2018 Task 3 test set into its own folder ``test_dest`` (default: ``ISIC2018_Task3_Test``
    beside ``dest``): its ground-truth CSV and ``ISIC2018_Task3_Test_Images/``, so ``data_dir=test_dest``
    with ``split="all"`` evaluates exactly the test images. Finished outputs are skipped without touching the
    network; interrupted downloads resume. Raises ``DownloadError`` (offline, HTTP error, corrupt file, unsafe
    zip) with instructions for a manual install.
    """
    dest = Path(dest)
    _fetch_into(dest, CORE_FILES if files is None else files, base_url, timeout)
    if include_test:
        _fetch_into(isic_test_folder(dest, test_dest), TEST_FILES, base_url, timeout)
    return dest


def isic_test_folder(dest: str | Path, test_dest: str | Path | None = None) -> Path:
    """Where ``include_test`` puts the ISIC2018 Task 3 test set: ``test_dest``, else beside ``dest``."""
    return Path(test_dest) if test_dest is not None else Path(dest).parent / TEST_DIR_NAME


def _fetch_into(dest: Path, names: Sequence[str], base_url: str, timeout: float) -> None:
    """Fetch and install the record files ``names`` into ``dest`` (those not already there)."""
    pending = [name for name in names if not (dest / _output_name(name)).exists()]
    if not pending:
        return
    work = dest / WORK_DIR_NAME
    try:
        record = _fetch_record(base_url, timeout)
        work.mkdir(parents=True, exist_ok=True)
        for name in pending:
            local = _fetch_file(_find(record, name), base_url, work, timeout)
            _install(local, dest / _output_name(name))
        if not any(work.iterdir()):
            work.rmdir()
    except DownloadError as exc:
        raise DownloadError(f"{exc}{_manual_steps(dest)}") from None
    except (OSError, http.client.HTTPException) as exc:
        message = f"Download failed: {exc!r}. Re-run to resume: partial files are kept in {work}."
        raise DownloadError(message + _manual_steps(dest)) from None


def _manual_steps(dest: Path) -> str:
    return (
        "\nTo install HAM10000 by hand instead:\n"
        "  1. Download it from Kaggle: kaggle datasets download kmader/skin-cancer-mnist-ham10000\n"
        "     (or download the files of https://doi.org/10.7910/DVN/DBW86T from Harvard Dataverse).\n"
        f"  2. Unzip it into {dest} so that it holds HAM10000_metadata.csv, HAM10000_images_part_1/ and\n"
        "     HAM10000_images_part_2/ (data/HAM10000/ is the project's automatic data folder),\n"
        "     or pass data_dir=<that folder> to the notebooks and helpers.data."
    )


def _key(name: str) -> str:
    """Record file name without its zip/table extension (Dataverse renames ingested tables to ``.tab``)."""
    path = PurePosixPath(name)
    return path.stem if path.suffix in (".zip", *_TABLE_SUFFIXES) else name


def _output_name(name: str) -> str:
    """What a record file becomes under dest: a folder for a zip, a ``.csv`` for a table."""
    suffix = PurePosixPath(name).suffix
    if suffix == ".zip":
        return _key(name)
    return _key(name) + ".csv" if suffix in _TABLE_SUFFIXES else name


def _open(url: str, timeout: float, offset: int = 0) -> http.client.HTTPResponse:
    headers = {**_HEADERS, **({"Range": f"bytes={offset}-"} if offset else {})}
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url} answered HTTP {exc.code} ({exc.reason}).") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Cannot reach {request.host} ({reason}): are you offline?") from None


def _fetch_record(base_url: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Map record file key -> Dataverse ``dataFile`` entry (id, filename, filesize, md5, ...)."""
    url = f"{base_url.rstrip('/')}/api/datasets/:persistentId/?persistentId={DOI}"
    with _open(url, timeout) as response:
        body = response.read()
    try:
        entries = [item["dataFile"] for item in json.loads(body)["data"]["latestVersion"]["files"]]
        return {_key(entry["filename"]): entry for entry in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"Unexpected answer from {url}: no data.latestVersion.files ({exc!r}).") from None


def _find(record: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if _key(name) not in record:
        listed = ", ".join(sorted(entry["filename"] for entry in record.values()))
        raise DownloadError(f"The record {DOI} has no file {name!r}; it lists: {listed}.")
    return record[_key(name)]


def _fetch_file(entry: dict[str, Any], base_url: str, work: Path, timeout: float) -> Path:
    """Download one record file into ``work`` (tables in their original CSV form); skip it if complete."""
    tabular = "originalFileFormat" in entry
    query = "?format=original" if tabular else ""
    url = f"{base_url.rstrip('/')}/api/access/datafile/{entry['id']}{query}"
    size = entry.get("originalFileSize") if tabular else entry.get("filesize")
    checksum = entry.get("checksum") or {}
    md5 = entry.get("md5") or (checksum.get("value") if checksum.get("type") == "MD5" else None)
    target = work / (_output_name(entry["filename"]) if tabular else entry["filename"])
    if target.exists() and (size is None or target.stat().st_size == size):
        return target
    target.unlink(missing_ok=True)
    _download(url, target, size, md5, timeout)
    return target


def _download(url: str, target: Path, size: int | None, md5: str | None, timeout: float) -> None:
    """Fill ``target.part`` (continuing it with an HTTP Range request), verify it, rename it to ``target``."""
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if size is None or offset > size:  # cannot resume safely: start over
        offset = 0
    if offset != size:
        with _open(url, timeout, offset) as response:
            offset = offset if response.status == 206 else 0  # server ignored the Range: start over
            length = response.headers.get("Content-Length")
            total = size or (offset + int(length) if length else None)
            bar = tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name
            )
            with part.open("ab" if offset else "wb") as out, bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    _verify(part, size, md5)
    part.replace(target)


def _verify(part: Path, size: int | None, md5: str | None) -> None:
    """Raise if ``part`` is short (kept for resume) or wrong (deleted)."""
    got = part.stat().st_size
    if size is not None and got < size:
        raise DownloadError(f"{part} has {got} of {size} bytes (connection closed early); re-run to resume.")
    problem = f"{got} bytes but the record says {size}" if size is not None and got != size else None
    if problem is None and md5:
        digest = _md5(part)
        problem = f"MD5 {digest} but the record says {md5}" if digest != md5.lower() else None
    if problem:
        part.unlink()
        raise DownloadError(f"Downloaded {part.name} is corrupt ({problem}); deleted it, re-run to retry.")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _install(local: Path, output: Path) -> None:
    """Unpack a zip into the folder ``output`` (then delete the zip), or move a table to ``output``."""
    if local.suffix != ".zip":
        local.replace(output)
        return
    _unpack(local, output)
    local.unlink()


def _unpack(archive: Path, output: Path) -> None:
    """Extract the images of ``archive`` flat into ``output`` via a temporary folder renamed at the end."""
    staging = archive.with_name(archive.stem + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)  # leftover of an interrupted unpack
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _image_members(zf, archive)
            staging.mkdir()
            for info in tqdm(members, desc=f"unpack {archive.name}", unit="file"):
                with zf.open(info) as src, (staging / PurePosixPath(info.filename).name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:  # damaged or exotic zip
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink()
        raise DownloadError(
            f"{archive.name} is not a valid zip ({exc}); deleted it, re-run to retry."
        ) from None
    staging.rename(output)


def _image_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """Image entries of ``zf``; refuses the whole archive if any entry escapes the target folder."""
    for info in zf.infolist():
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(
                f"{archive} has an unsafe member {info.filename!r} (absolute or '..'); not unpacked."
            )
    return [
        info
        for info in zf.infolist()
        if not info.is_dir()
        and "__MACOSX" not in info.filename
        and not PurePosixPath(info.filename).name.startswith(".")
        and info.filename.lower().endswith(IMAGE_SUFFIXES)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m helpers.download [dest] [--include-test]``."""
    parser = argparse.ArgumentParser(prog="python -m helpers.download", description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", type=Path, default=DEFAULT_DEST, help=f"default: {DEFAULT_DEST}")
    parser.add_argument(
        "--include-test",
        action="store_true",
        help=f"also fetch the ISIC2018 Task 3 test set (into {TEST_DIR_NAME}/ beside dest)",
    )
    parser.add_argument("--base-url", default=DATAVERSE_URL, help="Dataverse installation")
    parser.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        dest = download_ham10000(
            args.dest, base_url=args.base_url, timeout=args.timeout, include_test=args.include_test
        )
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"HAM10000 is ready in {dest}")
    if args.include_test:
        print(
            f"The ISIC 2018 Task 3 test set is ready in {isic_test_folder(dest)}; "
            "evaluate it with split='all'."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
