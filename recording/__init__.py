"""recording/: a room's forwarded RTP written to files, without transcoding.

RTP packets (as a viewer receives them) are reassembled into encoded frames
(``frames.py``), timestamped from RTP and the sender reports so that audio and
video stay in sync, and muxed with PyAV without decoding (``container.py``):
WebM for VP8 + Opus, fragmented MP4 for H.264 + Opus. Files go to a
:class:`RecordingStorage` (``storage.py``). See docs/recordings.md.
"""

from recording.frames import EncodedFrame, FrameAssembler
from recording.recorder import Recorder, RecorderClock, RecordingResult
from recording.storage import LocalDirectoryStorage, QuotaExceeded, RecordingStorage

__all__ = [
    "EncodedFrame",
    "FrameAssembler",
    "LocalDirectoryStorage",
    "QuotaExceeded",
    "Recorder",
    "RecorderClock",
    "RecordingResult",
    "RecordingStorage",
]
