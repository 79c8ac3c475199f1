"""FFmpeg's WHIP muxer publishes through airwave, past the 30 s consent window.

FFmpeg never answers ICE consent checks (aioice would close the session
about 30 s in) and offers no candidates (it is learned as peer-reflexive).
Its GnuTLS build's self-made P-224 certificate is refused by OpenSSL, so it
is given a P-256 one (the workaround in docs/clients.md).
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from api.components import AIRWAVE
from tests.conftest import RunningApp
from tests.sfu.sfu_peers import Viewer, wait_for

pytestmark = pytest.mark.parametrize("backend", ["embedded"])

PUBLISH_SECONDS = 42  # past aioice's consent failure (6 missed checks x 5 s)


def p256_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ffmpeg-whip")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_ffmpeg_publishes_h264_and_opus_for_longer_than_consent(
    running: RunningApp, tmp_path: Path
) -> None:
    cert, key = p256_certificate(tmp_path)
    started = time.monotonic()
    token = running.token("ffmpeg", room="ff", publish=True)
    script = Path(__file__).with_name("ffmpeg_whip_publisher.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), f"{running.url}/whip/ff", token, str(PUBLISH_SECONDS),
        str(cert), str(key), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    engine = running.app[AIRWAVE].media
    viewer = Viewer(("video", "audio"))
    try:
        await wait_for(lambda: engine.rooms().get("ff") is not None and engine.rooms()["ff"].live, 20)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{running.url}/whep/ff", data=await viewer.offer(),
                headers={"Content-Type": "application/sdp",
                         "Authorization": f"Bearer {running.token('v', room='ff', subscribe=True)}"},
            ) as r:
                answer = await r.text()
                assert r.status == 201, answer
        assert "H264/90000" in answer and "opus/48000" in answer
        await viewer.accept(answer)
        await wait_for(lambda: len(viewer.frames["video"]) > 10 and viewer.frames["audio"], 15)
        # H.264 arrives as Annex B with an IDR first (NAL type 5, after SPS/PPS).
        first = viewer.frames["video"][0][1]
        assert b"\x00\x00\x00\x01\x67" in first[:64] or b"\x00\x00\x01\x67" in first[:64]

        # Still flowing after the consent window has passed.
        await asyncio.sleep(max(0.0, 36 - (time.monotonic() - started)))
        before = len(viewer.frames["video"])
        await asyncio.sleep(2)
        assert len(viewer.frames["video"]) > before + 30, "video stopped after the consent window"
        assert engine.rooms()["ff"].live

        out, err = await asyncio.wait_for(proc.communicate(), PUBLISH_SECONDS + 30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert b"published" in out
        # FFmpeg's DELETE ended the session, and the viewer with it.
        await wait_for(lambda: engine.session_count == 0, 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await viewer.close()
