"""FFmpeg's own WHIP client (the whip muxer of the FFmpeg inside PyAV), run as a
subprocess by tests/api/test_ffmpeg_whip.py: H.264 baseline (no B-frames) and
Opus 48 kHz stereo at real-time pace for the given seconds, then it closes,
which sends DELETE on the session URL.

usage: ffmpeg_whip_publisher.py URL TOKEN SECONDS CERT_PEM KEY_PEM
"""

import sys
import time

import av
url, token, seconds, cert, key = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
opts = {"authorization": token, "cert_file": cert, "key_file": key, "handshake_timeout": "10000"}
out = av.open(url, "w", format="whip", options=opts)
v = out.add_stream("libx264", rate=30)
v.width, v.height, v.pix_fmt = 320, 240, "yuv420p"
v.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast", "bf": "0", "g": "30"}
a = out.add_stream("libopus", rate=48000)
a.layout = "stereo"
start = time.monotonic(); i = 0; ai = 0
while time.monotonic() - start < seconds:
    frame = av.VideoFrame(320, 240, "yuv420p")
    for n, plane in enumerate(frame.planes):
        plane.update(bytes([(i * 3 + n * 40) % 255]) * plane.buffer_size)
    frame.pts = i
    for p in v.encode(frame): out.mux(p)
    while ai * 960 < (i + 1) * 1600:
        af = av.AudioFrame(format="s16", layout="stereo", samples=960)
        af.planes[0].update(bytes(af.planes[0].buffer_size))
        af.sample_rate = 48000; af.pts = ai * 960
        for p in a.encode(af): out.mux(p)
        ai += 1
    i += 1
    delay = start + i / 30 - time.monotonic()
    if delay > 0: time.sleep(delay)
out.close()
print("published", i, "frames", flush=True)
