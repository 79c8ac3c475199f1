"""One recording: a room's RTP in, one file out, through a writer thread.

The recorder takes RTP through ``on_rtp(kind, packet)`` from a local
subscriber's sink (see sfu/recording_sink.py). Frames are reassembled on
the event loop and muxed on one writer thread per recording, in order, so
that a slow disk never stalls forwarding.

Timestamps: a track's first frame (and its first after a new source or a
jump) is placed by its wall-clock time, taken from the stream's sender
report mapping (NTP time of an RTP timestamp; the publisher's own when it
sends reports, so audio and video line up as the publisher captured them);
later frames advance by their RTP timestamps. A jump of the RTP clock that
the arrival times do not show (a publisher that reconnected, a reset
encoder) re-anchors the track at its arrival time, and every track's
timestamps only increase, so gaps never corrupt the file.

The file opens at the first video keyframe (its dimensions and H.264
parameter sets go into the header); audio before it is not kept. A write
that fails (a full disk, the storage's quota) stops the recording with
``failed_disk_full``; the broadcast is not touched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from recording.container import RecordingFile, VideoFormat, container_format
from recording.frames import (
    EncodedFrame,
    FrameAssembler,
    ReorderBuffer,
    h264_dimensions,
    h264_parameter_sets,
    vp8_dimensions,
)
from recording.storage import RecordingStorage

log = logging.getLogger("airwave.recording")

NTP_UNIT = float(1 << 32)
NTP_FROM_UNIX = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)
RTP_WRAP = 1 << 32
JUMP_SECONDS = 2.0  # RTP time and arrival time disagreeing by more is a new timeline
KEYFRAME_RETRY = 1.0  # seconds between two keyframe requests while video waits for one
STATUSES = ("recording", "complete", "interrupted", "failed_disk_full", "failed")


def ntp_now() -> float:
    """Now in NTP seconds, the timeline sender reports use."""
    return time.time() + NTP_FROM_UNIX


class RecorderClock(Protocol):
    """What the recorder asks of its source (a local subscriber)."""

    def clock(self, kind: str) -> tuple[int, int, int] | None: ...
    def request_keyframe(self, kind: str = "video") -> None: ...
    def resend(self, kind: str, seqs: list[int]) -> None: ...


@dataclass(frozen=True)
class RecordingResult:
    status: str
    size: int
    duration: float
    error: str = ""


class TrackTimeline:
    """One track's RTP timestamps onto the file's timeline, in its clock units."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.last_rtp: int | None = None
        self.extended = 0
        self.anchor: tuple[int, int] | None = None  # (extended rtp, pts)
        self.last_pts: int | None = None
        self.last_arrival = 0.0

    def reset(self) -> None:
        self.last_rtp = None
        self.anchor = None

    def pts(self, rtp: int, arrival: float, wall: float | None, epoch: float) -> int:
        if self.last_rtp is None:
            self.extended = rtp
        else:
            delta = ((rtp - self.last_rtp + (RTP_WRAP >> 1)) % RTP_WRAP) - (RTP_WRAP >> 1)
            self.extended += delta
            if self.anchor is not None and self.last_pts is not None:
                moved = delta / self.rate
                waited = arrival - self.last_arrival
                if abs(moved - waited) > JUMP_SECONDS:
                    self.anchor = (self.extended, self.last_pts + max(1, round(waited * self.rate)))
        self.last_rtp = rtp
        if self.anchor is None:
            seconds = (wall if wall is not None else ntp_now()) - epoch
            self.anchor = (self.extended, round(seconds * self.rate))
        pts = self.anchor[1] + (self.extended - self.anchor[0])
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        self.last_pts = pts
        self.last_arrival = arrival
        return pts


class Recorder:
    """Record one room's tracks (``codecs``: kind -> "vp8", "h264" or "opus")
    to ``key`` in ``storage``. ``on_failed`` hears a write failure (on the loop)."""

    def __init__(
        self,
        storage: RecordingStorage,
        key: str,
        codecs: dict[str, str],
        *,
        on_failed: Callable[[RecordingResult], None] | None = None,
    ) -> None:
        self.storage = storage
        self.key = key
        self.codecs = {kind: name.lower() for kind, name in codecs.items()}
        self.on_failed = on_failed
        self.source: RecorderClock | None = None
        self.error = ""
        self.status = "recording"
        self.frames = 0
        self._assemblers = {kind: FrameAssembler(name) for kind, name in self.codecs.items()}
        self._reorder = {kind: ReorderBuffer() for kind in self.codecs}
        self._keyframe_asked: dict[str, float] = {}  # kind -> when we last asked for a keyframe
        self._times = {
            kind: TrackTimeline(90000 if kind == "video" else 48000) for kind in self.codecs
        }
        self._file: RecordingFile | None = None
        self._opening = False
        self._epoch: float | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"rec-{key}")
        self._loop = asyncio.get_running_loop()
        self._stopped = False

    @property
    def extension(self) -> str:
        return container_format(self.codecs.get("video"))[1]

    def attach(self, source: RecorderClock) -> None:
        """Take RTP from ``source`` (again, after the publisher came back)."""
        self.source = source
        self._drain()
        for assembler in self._assemblers.values():
            assembler.reset()
        for buffer in self._reorder.values():
            buffer.reset()
        for track in self._times.values():
            track.reset()
        now = time.monotonic()  # the subscription starts at a keyframe it asked for
        self._keyframe_asked = dict.fromkeys(self.codecs, now)

    # -- RTP in ------------------------------------------------------------------------------

    def on_rtp(self, kind: str, packet: bytes) -> None:
        """One RTP packet of the ``kind`` track, as a viewer receives it."""
        buffer = self._reorder.get(kind)
        if buffer is None or self._stopped or self.error:
            return
        for due in buffer.push(packet, time.monotonic()):
            self._assemble(kind, due)
        if buffer.holes and self.source is not None:
            # what the SFU has in its history comes again at once (a packet reordered
            # before the keyframe we joined at, say); the rest when the publisher repairs it
            holes, buffer.holes = buffer.holes, []
            self.source.resend(kind, holes)

    def _drain(self) -> None:
        """What the reorder buffers hold, into frames (the source changes or the recording ends)."""
        if self._stopped or self.error:
            return
        for kind, buffer in self._reorder.items():
            for due in buffer.flush():
                self._assemble(kind, due)

    def _assemble(self, kind: str, packet: bytes) -> None:
        assembler = self._assemblers[kind]
        wanted = assembler.needs_keyframe
        frame = assembler.push(packet)
        if assembler.needs_keyframe:
            # at once when a loss makes us wait, and again each second while we do (the
            # first keyframe may come broken, and a request may be lost on the way)
            if not wanted or time.monotonic() - self._keyframe_asked.get(kind, 0.0) >= KEYFRAME_RETRY:
                self._ask_keyframe(kind)
        if frame is not None:
            self._frame(kind, frame)

    def _ask_keyframe(self, kind: str) -> None:
        if self.source is not None:
            self._keyframe_asked[kind] = time.monotonic()
            self.source.request_keyframe(kind)

    # -- frames to the file -------------------------------------------------------------------

    def _wall(self, kind: str, rtp: int) -> float | None:
        clock = self.source.clock(kind) if self.source is not None else None
        if clock is None:
            return None
        ntp, at_rtp, rate = clock
        delta = ((rtp - at_rtp + (RTP_WRAP >> 1)) % RTP_WRAP) - (RTP_WRAP >> 1)
        return ntp / NTP_UNIT + delta / rate

    def _frame(self, kind: str, frame: EncodedFrame) -> None:
        track = self._times[kind]
        wall = self._wall(kind, frame.timestamp) if track.anchor is None else None
        if self._file is None and not self._opening:
            if kind != "video" and "video" in self.codecs:
                return  # the file starts with the first video keyframe
            try:
                self._open(frame, wall)
            except ValueError as exc:  # e.g. an IDR without its SPS: wait for the next keyframe
                log.info("recording %s cannot start at this frame: %s", self.key, exc)
                self._assemblers[kind].needs_keyframe = True
                self._ask_keyframe(kind)
                return
        if self._epoch is None:
            return
        pts = track.pts(frame.timestamp, time.monotonic(), wall, self._epoch)
        if pts < 0:
            return  # audio from before the first video frame
        self.frames += 1
        self._submit(self._write, kind, frame.data, pts, frame.keyframe)

    def _open(self, first: EncodedFrame, wall: float | None) -> None:
        video = None
        codec = self.codecs.get("video")
        if codec == "vp8":
            width, height = vp8_dimensions(first.data)
            video = VideoFormat("vp8", width, height)
        elif codec == "h264":
            width, height = h264_dimensions(first.data)
            video = VideoFormat("h264", width, height, h264_parameter_sets(first.data))
        self._epoch = wall if wall is not None else ntp_now()
        self._opening = True
        self._submit(self._create, video, "audio" in self.codecs)

    def _create(self, video: VideoFormat | None, audio: bool) -> None:
        self._file = RecordingFile(self.storage.open_write(self.key), video, audio)

    def _write(self, kind: str, data: bytes, pts: int, keyframe: bool) -> None:
        if self._file is not None:
            self._file.write(kind, data, pts, keyframe)

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        if self.error:
            return
        self._writer.submit(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: object) -> None:
        if self.error:
            return
        try:
            fn(*args)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self._fail("failed_disk_full" if full else "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bad frame ends this recording only
            self._fail("failed", f"{type(exc).__name__}: {exc}")

    def _fail(self, status: str, error: str) -> None:
        """On the writer thread: keep what is written, tell the loop."""
        self.error = error
        self.status = status
        log.warning("recording %s stopped: %s", self.key, error)
        self._close_file()
        result = RecordingResult(status, self.storage.size(self.key) or 0, self.duration, error)
        if self.on_failed is not None:
            self._loop.call_soon_threadsafe(self.on_failed, result)

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except Exception as exc:  # noqa: BLE001 - the trailer may not fit on a full disk
            log.warning("recording %s: closing the file failed: %s", self.key, exc)
            try:
                file.file.close()
            except OSError:
                pass

    @property
    def dropped_frames(self) -> int:
        """Frames not in the file: a packet of theirs (or of a frame they refer to) never came."""
        return sum(a.dropped_frames for a in self._assemblers.values())

    @property
    def duration(self) -> float:
        ends = [t.last_pts / t.rate for t in self._times.values() if t.last_pts is not None]
        return max(ends, default=0.0)

    async def stop(self, status: str = "complete") -> RecordingResult:
        """Finish the file (trailer written) and say how it went. Idempotent."""
        if not self._stopped:
            self._drain()
            self._stopped = True
            if self.dropped_frames:
                log.info("recording %s lacks %d frames lost on the way", self.key, self.dropped_frames)
            if not self.error:
                self.status = status
            await self._loop.run_in_executor(self._writer, self._close_file)
            self._writer.shutdown(wait=True)
        size = self.storage.size(self.key) or 0
        return RecordingResult(self.status, size, round(self.duration, 3), self.error)

    def abandon(self) -> None:
        """Stop without a trailer, as a killed process would (tests, shutdown races)."""
        self._stopped = True
        self._writer.shutdown(wait=True)
        file, self._file = self._file, None
        if file is not None:
            file.file.close()
