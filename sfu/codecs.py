"""Which codecs the engine forwards, and how a subscriber's offer is matched.

The engine never transcodes, so a subscriber gets exactly the codec (and the
fmtp) its publisher sent, under the payload type the subscriber chose.
aiortc's own matching only knows two H.264 profiles; this module decides
itself from the SDP.
"""

from __future__ import annotations

import copy

from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters
from aiortc.sdp import parse_h264_profile_level_id

from .sdp import AnswerSection

# profile_idc + profile_iop (the first four hex digits of profile-level-id)
# accepted from publishers: constrained baseline, baseline, main, high.
H264_PROFILES = frozenset({"42e0", "42c0", "4200", "4d00", "6400"})
H264_DEFAULT_PROFILE_LEVEL_ID = "42001f"

# feedback we relay or answer ourselves. goog-remb: we send REMB to
# publishers and read it from subscribers that cannot give transport-cc
# feedback; transport-cc: only toward subscribers, whose downlink we then
# estimate ourselves (docs/media.md, "Estimation").
VIDEO_FEEDBACK = (("nack", None), ("nack", "pli"), ("ccm", "fir"), ("goog-remb", None))
TRANSPORT_CC = ("transport-cc", None)


def _mime(codec: RTCRtpCodecParameters) -> str:
    return codec.mimeType.lower()


def _packetization_mode(codec: RTCRtpCodecParameters) -> str:
    return str(codec.parameters.get("packetization-mode", "0"))


def h264_profile_prefix(codec: RTCRtpCodecParameters) -> str:
    return str(codec.parameters.get("profile-level-id", H264_DEFAULT_PROFILE_LEVEL_ID))[:4].lower()


def is_forwardable(codec: RTCRtpCodecParameters) -> bool:
    """A codec a publisher may send us."""
    mime = _mime(codec)
    if mime == "video/vp8":
        return codec.clockRate == 90000
    if mime == "video/h264":
        return (
            codec.clockRate == 90000
            and _packetization_mode(codec) == "1"
            and h264_profile_prefix(codec) in H264_PROFILES
        )
    if mime == "audio/opus":
        return codec.clockRate == 48000
    return False


def choose_publish_codec(
    offered: list[RTCRtpCodecParameters],
) -> RTCRtpCodecParameters | None:
    """The publisher's first forwardable codec, in its order of preference."""
    for codec in offered:
        if is_forwardable(codec):
            return codec
    return None


def _same_h264_profile(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
    try:
        pa = parse_h264_profile_level_id(
            str(a.parameters.get("profile-level-id", H264_DEFAULT_PROFILE_LEVEL_ID))
        )[0]
        pb = parse_h264_profile_level_id(
            str(b.parameters.get("profile-level-id", H264_DEFAULT_PROFILE_LEVEL_ID))
        )[0]
    except ValueError:
        return False
    return pa == pb


def match_subscriber_codec(
    published: RTCRtpCodecParameters, offered: list[RTCRtpCodecParameters]
) -> RTCRtpCodecParameters | None:
    """The subscriber's codec entry able to receive what the publisher sends."""
    mime = _mime(published)
    for codec in offered:
        if _mime(codec) != mime or codec.clockRate != published.clockRate:
            continue
        if mime == "video/h264":
            if _packetization_mode(codec) != "1" or not _same_h264_profile(published, codec):
                continue
        return codec
    return None


def answer_codec(
    published: RTCRtpCodecParameters, peer: RTCRtpCodecParameters, *, transport_cc: bool = False
) -> RTCRtpCodecParameters:
    """The publisher's codec and fmtp under the peer's payload type, with the
    feedback both the peer offered and we support (``transport_cc``: we
    estimate this subscriber's downlink from its transport-cc feedback, not
    its REMB)."""
    codec = copy.deepcopy(published)
    codec.payloadType = peer.payloadType
    offered = {(fb.type, fb.parameter) for fb in peer.rtcpFeedback}
    wanted: tuple[tuple[str, str | None], ...] = ()
    if codec.mimeType.lower().startswith("video/"):
        wanted = VIDEO_FEEDBACK
        if transport_cc:
            wanted = tuple(fb for fb in VIDEO_FEEDBACK if fb[0] != "goog-remb") + (TRANSPORT_CC,)
    elif transport_cc:
        wanted = (TRANSPORT_CC,)
    codec.rtcpFeedback = [
        RTCRtcpFeedback(type=t, parameter=p) for (t, p) in wanted if (t, p) in offered
    ]
    return codec


def is_rtx(codec: RTCRtpCodecParameters) -> bool:
    return _mime(codec) == "video/rtx"


def rtx_codec(payload_type: int, media: RTCRtpCodecParameters) -> RTCRtpCodecParameters:
    """The RTX codec (RFC 4588) with ``payload_type`` that repairs ``media``."""
    return RTCRtpCodecParameters(
        mimeType="video/rtx",
        clockRate=media.clockRate,
        payloadType=payload_type,
        parameters={"apt": media.payloadType},
    )


def match_rtx(
    media: RTCRtpCodecParameters, offered: list[RTCRtpCodecParameters]
) -> RTCRtpCodecParameters | None:
    """The peer's RTX entry for its codec ``media`` (``a=fmtp:N apt=<media pt>``),
    when it offered one and NACK with it: RTX only carries answers to NACKs."""
    if not any(fb.type == "nack" and not fb.parameter for fb in media.rtcpFeedback):
        return None
    for codec in offered:
        if (
            is_rtx(codec)
            and codec.clockRate == media.clockRate
            and codec.parameters.get("apt") == media.payloadType
        ):
            return rtx_codec(codec.payloadType, media)
    return None


def pull_codecs(kind: str) -> list[RTCRtpCodecParameters]:
    """Every codec a publisher may send us, as an edge offers them to its origin."""
    if kind == "audio":
        return [RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)]
    feedback = [RTCRtcpFeedback(type=t, parameter=p) for t, p in VIDEO_FEEDBACK]
    codecs = [RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96,
                                    rtcpFeedback=list(feedback))]
    for pt, profile in enumerate(sorted(H264_PROFILES), start=97):
        codecs.append(
            RTCRtpCodecParameters(
                mimeType="video/H264", clockRate=90000, payloadType=pt, rtcpFeedback=list(feedback),
                parameters={"packetization-mode": "1", "profile-level-id": profile + "1f"},
            )
        )
    # and RTX for each, so that the origin repairs the edge's losses in RTX streams
    first_rtx = 96 + len(codecs)
    codecs += [rtx_codec(first_rtx + i, media) for i, media in enumerate(list(codecs))]
    return codecs


def pull_sections() -> list[AnswerSection]:
    """An edge's offer to its origin: receive one audio and one video track."""
    return [
        AnswerSection(kind=kind, mid=str(i), protocol="UDP/TLS/RTP/SAVPF", direction="recvonly",
                      codecs=pull_codecs(kind))
        for i, kind in enumerate(("audio", "video"))
    ]


__all__ = [
    "pull_codecs",
    "pull_sections",
    "H264_PROFILES",
    "answer_codec",
    "choose_publish_codec",
    "h264_profile_prefix",
    "is_forwardable",
    "is_rtx",
    "match_rtx",
    "match_subscriber_codec",
    "rtx_codec",
]
