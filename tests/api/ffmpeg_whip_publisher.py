"""FFmpeg's own WHIP client (the whip muxer of the FFmpeg inside PyAV), run as a
subprocess by tests/api/test_ffmpeg_whip.py: H.264 baseline (no B-frames) and
Opus 48 kHz stereo at real-time pace for the given seconds, then it closes,
which sends DELETE on the session URL.

usage: ffmpeg_whip_publisher.py URL TOKEN SECONDS CERT_PEM KEY_PEM
"""

import sys
import time

import av

FPS = 30
SAMPLES = 960  # 20 ms of Opus at 48 kHz


def main(url: str, token: str, seconds: float, cert: str, key: str) -> int:
    options = {"authorization": token, "cert_file": cert, "key_file": key, "handshake_timeout": "10000"}
    out = av.open(url, "w", format="whip", options=options)
    video = out.add_stream("libx264", rate=FPS)
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    video.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast", "bf": "0", "g": "30"}
    audio = out.add_stream("libopus", rate=48000)
    audio.layout = "stereo"
    start = time.monotonic()
    frames = audio_frames = 0
    while time.monotonic() - start < seconds:
        frame = av.VideoFrame(320, 240, "yuv420p")
        for n, plane in enumerate(frame.planes):
            plane.update(bytes([(frames * 3 + n * 40) % 255]) * plane.buffer_size)
        frame.pts = frames
        for packet in video.encode(frame):
            out.mux(packet)
        while audio_frames * SAMPLES < (frames + 1) * 48000 // FPS:
            silence = av.AudioFrame(format="s16", layout="stereo", samples=SAMPLES)
            silence.planes[0].update(bytes(silence.planes[0].buffer_size))
            silence.sample_rate = 48000
            silence.pts = audio_frames * SAMPLES
            for packet in audio.encode(silence):
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
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]))
