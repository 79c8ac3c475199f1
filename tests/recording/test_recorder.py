"""A recorder as a local subscriber of the engine: aiortc publishers send
VP8 + Opus and H.264 + Opus; the files open in PyAV with both streams, the
duration of what was broadcast, and the frames as they were sent."""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path

from aiortc import RTCRtpSender
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from recording import LocalDirectoryStorage, Recorder, RecordingResult
from recording.frames import annexb_units
from sfu import MediaEngine
from tests.sfu.sfu_media import encoded_opus
from tests.sfu.sfu_peers import PacketTrack, Publisher, lose_every_sixth, wait_for

from .recorded_file import decodes, length_prefixed_units, read_recording

SECONDS = 6.0


def sent_in_order(sent: list, recorded: list) -> bool:
    """``recorded`` is a run of consecutive items of ``sent``."""
    n = len(recorded)
    return n > 0 and any(sent[i : i + n] == recorded for i, x in enumerate(sent) if x == recorded[0])


async def _publish(engine: MediaEngine, room: str, tracks, **kw) -> Publisher:
    pub = Publisher(tracks, **kw)
    session = await engine.publish(room, await pub.offer(), owner="alice")
    await pub.accept(session.answer_sdp)
    await wait_for(lambda: session.state == "connected", 10)
    return pub


async def _record(
    engine: MediaEngine, room: str, storage: LocalDirectoryStorage, key: str, seconds: float
) -> tuple[Recorder, float, list[str]]:
    closed: list[str] = []
    subscriber_codecs = {}
    recorder: Recorder | None = None

    class Sink:
        def on_rtp(self, kind: str, packet: bytes) -> None:
            assert recorder is not None
            recorder.on_rtp(kind, packet)

        def on_closed(self, reason: str) -> None:
            closed.append(reason)

    subscriber = engine.subscribe_local(room, Sink(), owner="node:recorder")
    subscriber_codecs = {k: c.mimeType.split("/")[1] for k, c in subscriber.codecs().items()}
    recorder = Recorder(storage, key, subscriber_codecs)
    recorder.attach(subscriber)
    await wait_for(lambda: recorder.frames > 0, 10)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    return recorder, started, closed


async def test_vp8_and_opus_recorded_to_webm_as_sent(engine, vp8_frames, opus_frames, tmp_path):
    video, audio = PacketTrack("video", vp8_frames), PacketTrack("audio", opus_frames)
    pub = await _publish(engine, "rec", [video, audio])
    storage = LocalDirectoryStorage(tmp_path)
    recorder, started, closed = await _record(engine, "rec", storage, "a.webm", SECONDS)
    await pub.close()
    await wait_for(lambda: closed == ["publisher_left"], 10)
    broadcast = time.monotonic() - started
    result = await recorder.stop()
    assert result.status == "complete" and result.size == storage.size("a.webm") > 0

    recorded = read_recording(tmp_path / "a.webm")
    assert recorded.codecs == {"video": "vp8", "audio": "opus"}
    assert abs(recorded.duration - broadcast) < 1.0, (recorded.duration, broadcast)
    assert abs(result.duration - recorded.duration) < 0.5
    # VP8 frames byte-identical, starting at the keyframe the join asked for
    frames = recorded.packets["video"]
    assert frames[0] == vp8_frames[0].data
    assert sent_in_order(video.sent, frames)
    assert sent_in_order(audio.sent, recorded.packets["audio"])
    # audio and video start together (the publisher's sender reports align them)
    assert abs(recorded.times["audio"][0] - recorded.times["video"][0]) < 0.2
    assert decodes(tmp_path / "a.webm") == 5


async def test_packets_the_publisher_repaired_over_rtx_are_in_the_file(engine, vp8_frames, tmp_path):
    """The publisher's network loses every 6th video packet; the SFU's NACKs
    bring each back over RTX, after the packets that followed it. The file
    holds every frame sent, none dropped while waiting for a keyframe."""
    video = PacketTrack("video", vp8_frames)
    pub = Publisher([video])
    session = await engine.publish("rec-rtx", await pub.offer(), owner="alice")
    await pub.accept(session.answer_sdp)
    await wait_for(lambda: session.state == "connected", 10)
    up, sender = session.uptracks[0], pub.senders[0]
    assert up.rtx_payload_type is not None  # the publisher repairs in its own RTX stream
    storage = LocalDirectoryStorage(tmp_path)
    recorder, _, closed = await _record(engine, "rec-rtx", storage, "r.webm", 0.5)
    dropped, rtx_seen = lose_every_sixth(session, up.in_ssrc, sender._rtx_ssrc, 20)
    await wait_for(lambda: len(dropped) == 20, 10)
    await wait_for(lambda: all(up.history(seq) is not None for seq in dropped), 5)  # all repaired
    await asyncio.sleep(1.0)  # frames after the last repair
    await wait_for(lambda: recorder.frames >= 60, 10)  # (a loaded machine is slower to get there)
    await pub.close()
    await wait_for(lambda: closed == ["publisher_left"], 10)
    result = await recorder.stop()
    assert result.status == "complete" and len(rtx_seen) >= 20

    frames = read_recording(tmp_path / "r.webm").packets["video"]
    assert sent_in_order(video.sent, frames), "a frame is missing from the file"
    assert len(frames) >= 60  # the run spans every loss (20 losses of every 6th packet)
    assert recorder.dropped_frames == 0


async def test_packets_lost_on_the_way_to_the_recorder_come_again_from_the_history(
    engine, vp8_frames, tmp_path
):
    """Every 10th video packet never reaches the recorder (as one that came before
    the keyframe the recorder joined at): it asks the SFU for the missing ones, which
    resends them from its history at once, and the file holds every frame."""
    video = PacketTrack("video", vp8_frames)
    pub = await _publish(engine, "rec-resend", [video])
    recorder: Recorder | None = None
    seen: set[int] = set()
    dropped: list[int] = []

    class LossySink:
        def on_rtp(self, kind: str, packet: bytes) -> None:
            seq = (packet[2] << 8) | packet[3]
            if seq not in seen:
                seen.add(seq)
                if len(seen) % 10 == 0:
                    dropped.append(seq)
                    return
            assert recorder is not None
            recorder.on_rtp(kind, packet)

        def on_closed(self, reason: str) -> None:
            pass

    subscriber = engine.subscribe_local("rec-resend", LossySink(), owner="node:recorder")
    recorder = Recorder(LocalDirectoryStorage(tmp_path), "r.webm", {"video": "vp8"})
    recorder.attach(subscriber)
    await wait_for(lambda: len(dropped) >= 20 and recorder.frames >= 30, 15)
    await asyncio.sleep(0.3)
    result = await recorder.stop()
    await subscriber.close("test")
    await pub.close()
    assert result.status == "complete"
    frames = read_recording(tmp_path / "r.webm").packets["video"]
    assert sent_in_order(video.sent, frames), "a frame is missing from the file"
    assert recorder.dropped_frames == 0 and len(frames) >= 30
    assert subscriber.downtracks[0].retransmitted >= len(dropped) - 1  # (the last may not be due yet)


class _Source:
    """A recorder's source that only counts its keyframe requests."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def clock(self, kind: str) -> None:
        return None

    def request_keyframe(self, kind: str = "video") -> None:
        self.asked.append(time.monotonic())

    def resend(self, kind: str, seqs: list[int]) -> None:
        pass  # nothing kept: the holes stay


async def test_video_waiting_for_a_keyframe_asks_again_each_second(vp8_frames, tmp_path):
    """The first keyframe comes broken (a packet never came): the recorder asks for
    another a second after it started, and each second while none comes."""
    payloads = [Vp8Encoder._packetize(f.data, n) for n, f in enumerate(vp8_frames[:75])]
    assert len(payloads[0]) > 1
    source = _Source()
    recorder = Recorder(LocalDirectoryStorage(tmp_path), "k.webm", {"video": "vp8"})
    recorder.attach(source)
    started, seq = time.monotonic(), 0
    for n, frame in enumerate(payloads):
        for i, payload in enumerate(frame):
            if (n, i) != (0, 1):  # lost: the keyframe is never whole
                recorder.on_rtp("video", RtpPacket(
                    payload_type=96, sequence_number=seq, timestamp=n * 3000, ssrc=1,
                    marker=int(i == len(frame) - 1), payload=payload).serialize())
            seq += 1
        await asyncio.sleep(0.033)  # 30 frames a second, 2.5 s
    waited = time.monotonic() - started
    result = await recorder.stop()
    assert recorder.frames == 0 and result.size == 0
    assert 2 <= len(source.asked) <= int(waited) + 1, (source.asked, started, waited)
    assert source.asked[0] - started >= 1.0
    assert all(b - a >= 1.0 for a, b in zip(source.asked, source.asked[1:], strict=False))


async def test_h264_and_opus_recorded_to_fragmented_mp4_as_sent(
    engine, h264_frames, opus_frames, tmp_path
):
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    video, audio = PacketTrack("video", h264_frames), PacketTrack("audio", opus_frames)
    pub = await _publish(engine, "rec", [video, audio], codec_prefs={"video": h264})
    storage = LocalDirectoryStorage(tmp_path)
    recorder, started, closed = await _record(engine, "rec", storage, "b.mp4", 4.0)
    await pub.close()
    await wait_for(lambda: closed == ["publisher_left"], 10)
    broadcast = time.monotonic() - started
    result = await recorder.stop()
    assert result.status == "complete"

    recorded = read_recording(tmp_path / "b.mp4")
    assert recorded.codecs == {"video": "h264", "audio": "opus"}
    assert abs(recorded.duration - broadcast) < 1.0
    samples = [[u for u in length_prefixed_units(p) if u[0] & 0x1F not in (7, 8)]
               for p in recorded.packets["video"]]
    sent = [[u for u in annexb_units(f) if u[0] & 0x1F not in (7, 8)] for f in video.sent]
    assert sent_in_order(sent, samples)
    assert any(u[0] & 0x1F == 5 for u in samples[0])  # starts with the IDR
    assert decodes(tmp_path / "b.mp4") == 5


async def test_an_abandoned_recording_is_still_playable(engine, h264_frames, opus_frames, tmp_path):
    """As after a SIGKILL: no trailer was written, the fragments so far play."""
    h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
    pub = await _publish(engine, "rec", [PacketTrack("video", h264_frames),
                                         PacketTrack("audio", opus_frames)],
                         codec_prefs={"video": h264})
    storage = LocalDirectoryStorage(tmp_path)
    recorder, _, _ = await _record(engine, "rec", storage, "c.mp4", 3.0)
    recorder.abandon()
    await pub.close()
    recorded = read_recording(tmp_path / "c.mp4")
    assert set(recorded.codecs) == {"video", "audio"}
    assert recorded.duration > 1.5
    assert decodes(tmp_path / "c.mp4") == 5


async def test_a_full_disk_stops_the_recording_not_the_broadcast(
    engine, vp8_frames, opus_frames, tmp_path
):
    video = PacketTrack("video", vp8_frames)
    pub = await _publish(engine, "rec", [video, PacketTrack("audio", opus_frames)])
    storage = LocalDirectoryStorage(tmp_path, quota=40_000)
    failures: list[RecordingResult] = []
    recorder, _, closed = await _record(engine, "rec", storage, "d.webm", 0.0)
    recorder.on_failed = failures.append
    await wait_for(lambda: failures, 15)
    assert failures[0].status == "failed_disk_full" and "quota" in failures[0].error
    assert storage.usage() <= 40_000
    sent = len(video.sent)
    await asyncio.sleep(0.5)
    assert len(video.sent) > sent and engine.has_publisher("rec") and not closed
    result = await recorder.stop()
    assert result.status == "failed_disk_full"
    await pub.close()


def test_quota_writer_fails_as_enospc(tmp_path: Path) -> None:
    storage = LocalDirectoryStorage(tmp_path, quota=10)
    with storage.open_write("e.webm") as f:
        f.write(b"12345")
        try:
            f.write(b"123456")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        else:
            raise AssertionError("the quota let the write through")


async def test_an_audio_only_broadcast_is_recorded_to_webm(engine, opus_frames, tmp_path):
    audio = PacketTrack("audio", opus_frames)
    pub = await _publish(engine, "rec", [audio])
    storage = LocalDirectoryStorage(tmp_path)
    recorder, _, closed = await _record(engine, "rec", storage, "f.webm", 2.0)
    await pub.close()
    await wait_for(lambda: closed == ["publisher_left"], 10)
    result = await recorder.stop()
    assert result.status == "complete" and recorder.extension == "webm"
    recorded = read_recording(tmp_path / "f.webm")
    assert recorded.codecs == {"audio": "opus"}
    assert sent_in_order(audio.sent, recorded.packets["audio"]) and recorded.duration > 1.5


class TimedTrack(PacketTrack):
    """A PacketTrack that notes when (wall clock) each frame was handed to its sender."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent_at: list[float] = []

    async def recv(self):
        packet = await super().recv()
        self.sent_at.append(time.monotonic())
        return packet


def _offsets(sent: list[bytes], sent_at: list[float], recorded: list[bytes], times: list[float]) -> list[float]:
    """File time minus send time of each recorded frame (the latest run of sent frames it matches)."""
    n = len(recorded)
    start = max(i for i, x in enumerate(sent) if x == recorded[0] and sent[i : i + n] == recorded)
    return [t - sent_at[start + j] for j, t in enumerate(times)]


async def test_audio_and_video_keep_the_time_they_were_sent_at(engine, vp8_frames, tmp_path):
    """Each track maps send time to file time with the same offset: in sync,
    the publisher's sender reports tying their RTP clocks together."""
    video, audio = TimedTrack("video", vp8_frames), TimedTrack("audio", encoded_opus(500))
    pub = await _publish(engine, "rec", [video, audio])
    storage = LocalDirectoryStorage(tmp_path)
    await asyncio.sleep(2)  # sender reports have arrived
    recorder, _, closed = await _record(engine, "rec", storage, "s.webm", 4.0)
    result = await recorder.stop()
    await pub.close()
    assert result.status == "complete"
    recorded = read_recording(tmp_path / "s.webm")
    video_offsets = _offsets(video.sent, video.sent_at, recorded.packets["video"], recorded.times["video"])
    audio_offsets = _offsets(audio.sent, audio.sent_at, recorded.packets["audio"], recorded.times["audio"])
    video_offsets.sort()
    audio_offsets.sort()
    skew = video_offsets[len(video_offsets) // 2] - audio_offsets[len(audio_offsets) // 2]
    assert abs(skew) < 0.08, skew
    for offsets in (video_offsets, audio_offsets):  # no drift along the file
        assert offsets[-1] - offsets[0] < 0.15
