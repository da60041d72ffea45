"""helpers.download against a fake Harvard Dataverse served from 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from helpers.data import load_metadata
from helpers.download import WORK_DIR_NAME, DownloadError, download_ham10000, main

PART_IDS = {"HAM10000_images_part_1.zip": 101, "HAM10000_images_part_2.zip": 102}
METADATA_ID = 100


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (seed * 40 % 256, 90, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


IMAGES_1 = {f"ISIC_000000{i}.jpg": _jpeg(i) for i in range(3)}
IMAGES_2 = {f"ISIC_000001{i}.jpg": _jpeg(i + 3) for i in range(3)}
ZIP_1 = _zip(IMAGES_1)  # images at the zip root
ZIP_2 = _zip(  # images inside a folder, plus macOS junk and a text file that must be skipped
    {
        **{f"HAM10000_images_part_2/{name}": data for name, data in IMAGES_2.items()},
        "__MACOSX/HAM10000_images_part_2/._ISIC_0000010.jpg": b"junk",
        "HAM10000_images_part_2/readme.txt": b"not an image",
    }
)
METADATA_CSV = "lesion_id,image_id,dx,dx_type,age,sex,localization\n" + "".join(
    f"HAM_{i},{Path(name).stem},nv,histo,40.0,male,back\n" for i, name in enumerate([*IMAGES_1, *IMAGES_2])
)
METADATA_TAB = METADATA_CSV.replace(",", "\t").encode()


class FakeDataverse:
    """Record JSON + file bodies; logs every request as (path, Range header)."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.bodies: dict[tuple[int, bool], bytes] = {}  # (file id, format=original) -> body
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.url = ""

    def add(self, file_id: int, filename: str, body: bytes, **overrides: object) -> None:
        entry = {
            "id": file_id,
            "filename": filename,
            "filesize": len(body),
            "md5": hashlib.md5(body).hexdigest(),
        }
        self.entries.append({**entry, **overrides})
        self.bodies[(file_id, False)] = body

    def add_table(self, file_id: int, filename: str, original: bytes, archival: bytes) -> None:
        """An ingested table: ``.tab`` by default, the uploaded CSV with ``?format=original``."""
        self.add(
            file_id,
            filename,
            archival,
            originalFileFormat="text/csv",
            originalFileSize=len(original),
            md5=hashlib.md5(original).hexdigest(),
        )
        self.bodies[(file_id, True)] = original

    def datafile_requests(self) -> list[tuple[str, str | None]]:
        return [r for r in self.requests if r[0].startswith("/api/access/datafile/")]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        fake: FakeDataverse = self.server.fake  # type: ignore[attr-defined]
        fake.requests.append((self.path, self.headers.get("Range")))
        url = urlsplit(self.path)
        if url.path == "/api/datasets/:persistentId/" and url.query == "persistentId=doi:10.7910/DVN/DBW86T":
            files = [{"label": e["filename"], "dataFile": e} for e in fake.entries]
            return self._send(200, json.dumps({"status": "OK", "data": {"latestVersion": {"files": files}}}))
        match = re.fullmatch(r"/api/access/datafile/(\d+)", url.path)
        body = match and fake.bodies.get((int(match[1]), url.query == "format=original"))
        if body is None:
            return self._send(404, '{"status": "ERROR"}')
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-")[1])
        if start and fake.honour_range:
            return self._send(
                206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
            )
        return self._send(200, body)

    def _send(self, status: int, body: bytes | str, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake():
    """A fake Dataverse holding the HAM10000 core files, on an ephemeral port; shut down afterwards."""
    dataverse = FakeDataverse()
    dataverse.add_table(METADATA_ID, "HAM10000_metadata.tab", METADATA_CSV.encode(), METADATA_TAB)
    for name, body in zip(PART_IDS, (ZIP_1, ZIP_2), strict=True):
        dataverse.add(PART_IDS[name], name, body)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.fake = dataverse  # type: ignore[attr-defined]
    dataverse.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield dataverse
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _assert_kaggle_layout(dest: Path) -> None:
    assert (dest / "HAM10000_metadata.csv").read_text() == METADATA_CSV
    assert _listing(dest / "HAM10000_images_part_1") == IMAGES_1
    assert _listing(dest / "HAM10000_images_part_2") == IMAGES_2


def test_full_download_gives_kaggle_layout(fake, tmp_path):
    dest = download_ham10000(tmp_path / "HAM10000", base_url=fake.url, timeout=5)
    assert dest == tmp_path / "HAM10000"
    _assert_kaggle_layout(dest)
    assert sorted(p.name for p in dest.iterdir()) == [
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
        "HAM10000_metadata.csv",
    ]
    assert (f"/api/access/datafile/{METADATA_ID}?format=original", None) in fake.requests


def test_resume_continues_partial_file_with_range_request(fake, tmp_path):
    dest = tmp_path / "HAM10000"
    (dest / WORK_DIR_NAME).mkdir(parents=True)
    done = len(ZIP_1) // 2
    (dest / WORK_DIR_NAME / "HAM10000_images_part_1.zip.part").write_bytes(ZIP_1[:done])
    download_ham10000(dest, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert fake.datafile_requests() == [
        (f"/api/access/datafile/{PART_IDS['HAM10000_images_part_1.zip']}", f"bytes={done}-")
    ]
    assert _listing(dest / "HAM10000_images_part_1") == IMAGES_1
    assert not (dest / WORK_DIR_NAME).exists()


def test_server_ignoring_range_restarts_from_scratch(fake, tmp_path):
    fake.honour_range = False
    dest = tmp_path / "HAM10000"
    (dest / WORK_DIR_NAME).mkdir(parents=True)
    (dest / WORK_DIR_NAME / "HAM10000_images_part_1.zip.part").write_bytes(ZIP_1[:10])
    download_ham10000(dest, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert _listing(dest / "HAM10000_images_part_1") == IMAGES_1


@pytest.mark.parametrize(
    ("override", "expected"),
    [({"md5": "0" * 32}, "MD5"), ({"filesize": len(ZIP_1) - 5}, "bytes but the record says")],
)
def test_corrupt_download_is_rejected_and_deleted(fake, tmp_path, override, expected):
    fake.entries[1].update(override)
    dest = tmp_path / "HAM10000"
    with pytest.raises(DownloadError, match=expected) as info:
        download_ham10000(dest, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert "corrupt" in str(info.value)
    assert not (dest / WORK_DIR_NAME / "HAM10000_images_part_1.zip").exists()
    assert not (dest / WORK_DIR_NAME / "HAM10000_images_part_1.zip.part").exists()
    assert not (dest / "HAM10000_images_part_1").exists()


def test_short_download_is_kept_for_resume(fake, tmp_path):
    fake.entries[1]["filesize"] = len(ZIP_1) + 100
    dest = tmp_path / "HAM10000"
    with pytest.raises(DownloadError, match="re-run to resume"):
        download_ham10000(dest, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert (dest / WORK_DIR_NAME / "HAM10000_images_part_1.zip.part").read_bytes() == ZIP_1
    assert not (dest / "HAM10000_images_part_1").exists()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_offline_fails_fast_with_actionable_message(tmp_path):
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_ham10000(tmp_path / "HAM10000", base_url=_closed_port_url(), timeout=3)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "Cannot reach 127.0.0.1" in message
    assert "kaggle datasets download kmader/skin-cancer-mnist-ham10000" in message
    assert str(tmp_path / "HAM10000") in message and "data/HAM10000/" in message and "data_dir=" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not (tmp_path / "HAM10000").exists()


def test_cli_offline_prints_one_message_and_exits_1(tmp_path, capsys):
    assert main([str(tmp_path / "d"), "--base-url", _closed_port_url(), "--timeout", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot reach") and "Traceback" not in err and "kmader" in err


def test_complete_outputs_are_not_downloaded_again(fake, tmp_path):
    dest = download_ham10000(tmp_path / "HAM10000", base_url=fake.url, timeout=5)
    fake.requests.clear()
    assert download_ham10000(dest, base_url=_closed_port_url(), timeout=3) == dest  # no network needed
    assert download_ham10000(dest, base_url=fake.url, timeout=5) == dest
    assert fake.requests == []
    _assert_kaggle_layout(dest)


def test_complete_archive_is_not_downloaded_again_and_interrupted_unpack_is_redone(fake, tmp_path):
    work = tmp_path / "HAM10000" / WORK_DIR_NAME
    (work / "HAM10000_images_part_1.unpacking").mkdir(parents=True)
    (work / "HAM10000_images_part_1.unpacking" / "ISIC_stale.jpg").write_bytes(b"half written")
    (work / "HAM10000_images_part_1.zip").write_bytes(ZIP_1)
    download_ham10000(work.parent, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert fake.datafile_requests() == []
    assert _listing(work.parent / "HAM10000_images_part_1") == IMAGES_1
    assert not work.exists()


@pytest.mark.parametrize("member", ["../evil.jpg", "/tmp/evil.jpg", "a/../../evil.jpg", "..\\evil.jpg"])
def test_zip_with_path_traversal_member_is_rejected(fake, tmp_path, member):
    fake.entries = fake.entries[:1]
    fake.add(101, "HAM10000_images_part_1.zip", _zip({"ISIC_0000000.jpg": _jpeg(0), member: b"evil"}))
    dest = tmp_path / "sub" / "HAM10000"
    with pytest.raises(DownloadError, match="unsafe member"):
        download_ham10000(dest, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert not (dest / "HAM10000_images_part_1").exists()
    assert list(tmp_path.rglob("*evil*")) == []


def test_unknown_record_file_lists_available_files(fake, tmp_path):
    with pytest.raises(DownloadError, match=r"no file 'nope.zip'; it lists: HAM10000_images_part_1.zip"):
        download_ham10000(tmp_path, base_url=fake.url, timeout=5, files=["nope.zip"])


def test_http_error_is_reported_with_status(fake, tmp_path):
    del fake.bodies[(101, False)]
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download_ham10000(tmp_path, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert "kaggle datasets download" in str(info.value)


def test_cli_include_test_fetches_isic2018_test_set(fake, tmp_path, capsys):
    test_images = {"ISIC_0034524.jpg": _jpeg(7)}
    truth = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0034524,0,1,0,0,0,0,0\n"
    fake.add(
        200,
        "ISIC2018_Task3_Test_Images.zip",
        _zip({f"ISIC2018_Task3_Test_Images/{k}": v for k, v in test_images.items()}),
    )
    fake.add_table(
        201, "ISIC2018_Task3_Test_GroundTruth.tab", truth.encode(), truth.replace(",", "\t").encode()
    )
    dest, test_dest = tmp_path / "HAM10000", tmp_path / "ISIC2018_Task3_Test"
    assert main([str(dest), "--base-url", fake.url, "--include-test"]) == 0
    out = capsys.readouterr().out
    assert f"ready in {dest}" in out and f"test set is ready in {test_dest}" in out
    _assert_kaggle_layout(dest)
    assert not list(dest.glob("ISIC2018*")), "the test set is kept apart from the training data"
    assert _listing(test_dest / "ISIC2018_Task3_Test_Images") == test_images
    assert (test_dest / "ISIC2018_Task3_Test_GroundTruth.csv").read_text() == truth
    test_df = load_metadata(test_dest, verbose=False)  # the folder evaluate_model(split="all") reads
    assert test_df[["image_id", "dx"]].values.tolist() == [["ISIC_0034524", "nv"]]


def test_damaged_compressed_data_in_a_zip_is_reported_and_deleted(fake, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ISIC_0000000.jpg", bytes(range(256)) * 64)
    damaged = bytearray(buffer.getvalue())
    start = 30 + len("ISIC_0000000.jpg")  # the deflate stream right after the local file header
    damaged[start : start + 8] = b"\xff" * 8  # the record's size and MD5 match: the archive itself is bad
    fake.add(101, "HAM10000_images_part_1.zip", bytes(damaged))
    with pytest.raises(DownloadError, match=r"HAM10000_images_part_1.zip is not a valid zip \(Error -3"):
        download_ham10000(tmp_path, base_url=fake.url, timeout=5, files=["HAM10000_images_part_1.zip"])
    assert not list((tmp_path / WORK_DIR_NAME).iterdir()), "the bad archive and its staging folder are gone"
