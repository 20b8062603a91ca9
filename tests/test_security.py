"""The served studio as an attacker sees it: the file route probed for anything outside the outputs
folder, hostile uploads through the API, the upload size cap and the bind address."""

from __future__ import annotations

import http.client
import os
import secrets
import urllib.parse
from pathlib import Path

import httpx
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from benchmarks.hostile_media import _png  # noqa: E402
from conftest import launched_studio  # noqa: E402
from studio.serve import main as serve_main  # noqa: E402

SETTINGS = ("", 7, 2, 4.0, "default", "1:1 · 32x32")
CANARY = f"canary-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory):
    """A studio whose model folder, working folder, home, hub cache and /etc all hold things it must not
    serve; yields (url, outputs, secret files)."""
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("security")
    outputs, workdir = root / "outputs", root / "cwd"
    workdir.mkdir()
    secrets_ = {
        "model": tiny_model_dir / "canary.txt",
        "cwd": workdir / "canary.txt",
        "home": Path.home() / f".studio-{CANARY}",
        "hub cache": Path(constants.HF_HUB_CACHE) / f"studio-{CANARY}.txt",
        "outputs' parent": root / "canary.txt",
    }
    for path in secrets_.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CANARY)
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        with launched_studio(tiny_model_dir, outputs, "--max-upload", "100kb") as (url, history):
            (history.folder / "control.txt").write_text(CANARY)  # the one place files may come from
            os.symlink(secrets_["model"], history.folder / "link.mp4")
            yield url, history.folder, secrets_
    finally:
        os.chdir(previous)
        for key in ("home", "hub cache"):
            secrets_[key].unlink(missing_ok=True)


def fetch(url: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side normalisation of ../ or %2e)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def probes(outputs: Path, target: Path) -> list[str]:
    target_abs = str(target)
    up = len(outputs.parts) - 1
    rel = target_abs.lstrip("/")
    variants = []
    for prefix in ("/gradio_api/file=", "/file=", "/gradio_api/file/", "/static/", "/assets/", "/gradio_api/static/"):
        variants += [
            prefix + target_abs,
            prefix + urllib.parse.quote(target_abs, safe=""),
            prefix + urllib.parse.quote(urllib.parse.quote(target_abs, safe=""), safe=""),
            prefix + target_abs.replace("/", "//"),
            prefix + target_abs + "%00.mp4",
            prefix + str(outputs) + "/" + "../" * up + rel,
            prefix + str(outputs) + "/" + "..%2f" * up + urllib.parse.quote(rel),
            prefix + str(outputs) + "/" + "%2e%2e/" * up + rel,
            prefix + str(outputs) + "/" + "%252e%252e%252f" * up + rel,
            prefix + str(outputs) + "\\" + "..\\" * up + rel.replace("/", "\\"),
            prefix + str(outputs) + "/" + "....//" * up + rel,
            prefix + "../" * 12 + rel,
            prefix + os.path.relpath(target_abs),
        ]
    if target_abs.startswith(str(Path.home())):
        variants.append("/gradio_api/file=~/" + os.path.relpath(target_abs, Path.home()))
    return variants


def test_the_file_route_serves_the_outputs_folder_and_nothing_else(studio):
    url, outputs, secrets_ = studio
    status, body = fetch(url, f"/gradio_api/file={outputs}/control.txt")
    assert status == 200 and body.decode() == CANARY  # the probes below can see a file when one is served
    targets = {**secrets_, "/etc/passwd": Path("/etc/passwd")}
    served, tried = [], 0
    for label, target in targets.items():
        for path in probes(outputs, target):
            status, body = fetch(url, path)
            tried += 1
            if status == 200 and (CANARY.encode() in body or b"root:" in body):
                served.append((label, path))
    for path in ("/gradio_api/file=" + str(outputs / "link.mp4"), "/gradio_api/file=/proc/self/environ",
                 "/gradio_api/file=/proc/self/cmdline"):
        status, body = fetch(url, path)
        tried += 1
        if status == 200 and body:
            served.append(("outside via link or /proc", path))
    assert tried > 300 and served == []


def test_hostile_uploads_through_the_api_get_the_reason_and_leave_nothing(studio, tmp_path):
    url, outputs, _ = studio
    client = Client(url, verbose=False)
    bomb, playlist = tmp_path / "bomb.png", tmp_path / "list.mp4"
    bomb.write_bytes(_png(9000, 9000, b"\0" * 10))
    playlist.write_bytes(b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n")
    with pytest.raises(Exception, match=r"bomb.png: the image is 9000x9000 \(81.0 MP\)"):
        client.predict(handle_file(str(bomb)), "a ball", *SETTINGS, 1.0, 8, api_name="/animate")
    with pytest.raises(Exception, match="list.mp4: this is a playlist"):
        client.predict(handle_file(str(playlist)), "forward", 9, False, 1, "x", *SETTINGS, 0.5, 8,
                       api_name="/extend")
    assert list((outputs / "uploads").iterdir()) == []  # rejected before a copy was kept


def test_uploads_over_the_size_cap_are_refused(studio, tmp_path):
    url, outputs, _ = studio
    big = tmp_path / "big.png"
    big.write_bytes(_png(4, 4, b"\0" * 52, extra=b"\0" * 200_000))
    with pytest.raises(Exception, match="exceeds the maximum file size of 102400 bytes"):
        Client(url, verbose=False).predict(handle_file(str(big)), "a ball", *SETTINGS, 1.0, 8, api_name="/animate")
    # The client checks the cap itself; a raw upload shows the server enforces it too.
    refused = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
    accepted = httpx.post(url + "gradio_api/upload", files={"files": ("small.png", _png(4, 4, b"\0" * 52), "image/png")})
    assert refused.status_code == 413 and accepted.status_code == 200, (refused.text, accepted.text)


def test_listening_beyond_this_machine_needs_a_flag(capsys):
    assert serve_main(["--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--listen-anywhere" in err and "other machines" in err


def test_with_auth_nothing_is_served_before_logging_in(tiny_model_dir, tmp_path):
    with launched_studio(tiny_model_dir, tmp_path / "outputs", "--auth", "maker:s3cret") as (url, history):
        (history.folder / "control.txt").write_text(CANARY)
        path = f"/gradio_api/file={history.folder}/control.txt"
        status, body = fetch(url, path)
        assert status in (401, 403) and CANARY.encode() not in body
        login = httpx.post(url + "login", data={"username": "maker", "password": "wrong"})
        assert login.status_code in (400, 401)
        with httpx.Client(base_url=url) as session:
            assert session.post("login", data={"username": "maker", "password": "s3cret"}).status_code == 200
            served = session.get(path.lstrip("/"))
            assert served.status_code == 200 and served.text == CANARY
