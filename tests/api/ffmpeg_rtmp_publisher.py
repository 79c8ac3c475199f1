"""FFmpeg's RTMP client (the flv muxer of the FFmpeg inside PyAV), run as a
subprocess by tests/api/test_rtmp.py: libx264 (profile and B-frames as asked;
profile ``hevc``: libx265)
and AAC 44.1 kHz stereo at real-time pace for the given seconds. It writes
the NAL units it sent, per frame, as hex JSON lines to NALS_OUT (the SPS and
PPS first) and FFmpeg's own log to stderr, where a server's refusal shows as
``Server error: ...``.

usage: ffmpeg_rtmp_publisher.py URL SECONDS PROFILE BFRAMES NALS_OUT
"""

import json
import logging
import math
import sys
import time

import av
import av.logging

FPS = 30
AAC_RATE = 44100
AAC_FRAME = 1024


def annexb_units(data: bytes) -> list[bytes]:
    units, pos = [], 0
    starts = []
    while True:
        i = data.find(b"\x00\x00\x01", pos)
        if i < 0:
            break
        starts.append(i + 3)
        pos = i + 3
    for n, s in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(data)
        unit = data[s:end]
        while unit.endswith(b"\x00") and n + 1 < len(starts):
            unit = unit[:-1]  # the leading zero of a 4-byte start code
        units.append(unit)
    return units


def main(url: str, seconds: float, profile: str, bframes: str, nals_out: str) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    av.logging.set_level(av.logging.ERROR)
    try:
        return publish(url, seconds, profile, bframes, nals_out)
    except av.FFmpegError as exc:
        print("publish failed:", exc, file=sys.stderr, flush=True)
        return 3


def publish(url: str, seconds: float, profile: str, bframes: str, nals_out: str) -> int:
    out = av.open(url, "w", format="flv")
    if profile == "hevc":  # FFmpeg 8 sends it as enhanced RTMP (FourCC hvc1)
        video = out.add_stream("libx265", rate=FPS)
        video.options = {"preset": "ultrafast", "x265-params": f"bframes={bframes}:log-level=error"}
    else:
        video = out.add_stream("libx264", rate=FPS)
        video.options = {"profile": profile, "preset": "veryfast", "tune": "zerolatency",
                         "bf": bframes, "g": "30", "x264-params": f"bframes={bframes}"}
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    audio = out.add_stream("aac", rate=AAC_RATE)
    audio.layout = "stereo"
    # ten periods per AAC frame (about 431 Hz): every frame carries the same samples
    tone = b"".join(
        int(8000 * math.sin(2 * math.pi * 10 * i / AAC_FRAME)).to_bytes(2, "little", signed=True) * 2
        for i in range(AAC_FRAME)
    )
    start = time.monotonic()
    frames = audio_frames = 0
    with open(nals_out, "w") as record:
        while time.monotonic() - start < seconds:
            frame = av.VideoFrame(320, 240, "yuv420p")
            for n, plane in enumerate(frame.planes):
                plane.update(bytes([(frames * 3 + n * 40) % 255]) * plane.buffer_size)
            frame.pts = frames
            for packet in video.encode(frame):
                if not record.tell():
                    extra = video.codec_context.extradata or b""
                    record.write(json.dumps([u.hex() for u in annexb_units(extra)]) + "\n")
                record.write(json.dumps([u.hex() for u in annexb_units(bytes(packet))]) + "\n")
                out.mux(packet)
            while audio_frames * AAC_FRAME < (frames + 1) * AAC_RATE // FPS:
                pcm = av.AudioFrame(format="s16", layout="stereo", samples=AAC_FRAME)
                pcm.planes[0].update(tone)
                pcm.sample_rate = AAC_RATE
                pcm.pts = audio_frames * AAC_FRAME
                for packet in audio.encode(pcm):
                    out.mux(packet)
                audio_frames += 1
            frames += 1
            delay = start + frames / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        out.close()
    print("published", frames, "frames", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
