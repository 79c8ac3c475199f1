"""Offer parsing and answer writing.

Parsing uses aiortc's SDP parser (wrapped so that any failure is an
:class:`SdpError`); answers (and, for calls, offers) are written here because
the engine chooses codecs and header extensions itself. aiortc's parser
does not read ``a=rid`` / ``a=simulcast`` (RFC 8851, RFC 8853): those are
read here from the text, per media section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiortc import sdp as aiortc_sdp
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS, RTCDtlsParameters
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceParameters
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .errors import SdpError

MAX_SDP_LENGTH = 64 * 1024
MAX_LAYERS = 4
MAX_MEDIA_SECTIONS = 16  # an answer has one section per offered one: no amplification
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")

# header extensions we read or write (one-byte ids, RFC 8285)
EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
PUBLISHER_EXTENSIONS = (EXT_MID, EXT_RID, EXT_REPAIRED_RID, EXT_ABS_SEND_TIME)
SUBSCRIBER_EXTENSIONS = (EXT_ABS_SEND_TIME,)


@dataclass
class OfferedMedia:
    index: int
    kind: str  # "audio", "video" or anything else (rejected)
    mid: str
    protocol: str
    fmt: list[str]
    direction: str
    rtcp_mux: bool
    codecs: list[RTCRtpCodecParameters]
    ssrcs: list[int]
    fid: list[tuple[int, int]]  # (media ssrc, rtx ssrc)
    msid: str | None
    extensions: dict[str, int] = field(default_factory=dict)  # uri -> id
    rids: list[str] = field(default_factory=list)  # simulcast layers sent, in a=simulcast order
    paused_rids: list[str] = field(default_factory=list)  # of those, the ones marked ~
    sim_ssrcs: list[int] = field(default_factory=list)  # a=ssrc-group:SIM, in its order


@dataclass
class Offer:
    media: list[OfferedMedia]
    ice: RTCIceParameters
    dtls: RTCDtlsParameters
    candidates: list[RTCIceCandidate] = field(default_factory=list)
    candidates_complete: bool = False
    bundle: list[str] = field(default_factory=list)


def _check_ice_credentials(ice: RTCIceParameters) -> None:
    ufrag, pwd = ice.usernameFragment, ice.password
    if not ufrag or not pwd:
        raise SdpError("ICE username fragment or password is missing")
    if not (4 <= len(ufrag) <= 256 and _ICE_CHARS.match(ufrag)):
        raise SdpError("invalid ice-ufrag")
    if not (22 <= len(pwd) <= 256 and _ICE_CHARS.match(pwd)):
        raise SdpError("invalid ice-pwd")


def ice_parameters(ufrag: str, pwd: str) -> RTCIceParameters:
    """Validated ICE credentials (from an SDP fragment); SdpError otherwise."""
    parameters = RTCIceParameters(usernameFragment=ufrag, password=pwd)
    _check_ice_credentials(parameters)
    return parameters


def parse_offer(text: str) -> Offer:
    """Parse and validate an offer; raise :class:`SdpError` on anything unusable."""
    if not isinstance(text, str) or not text.strip():
        raise SdpError("empty SDP")
    if len(text) > MAX_SDP_LENGTH:
        raise SdpError("SDP too large")
    if "\x00" in text:
        raise SdpError("SDP contains NUL")
    try:
        desc = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc raises assert/Value/Key/Index/StopIteration errors
        raise SdpError(f"unparseable SDP: {type(exc).__name__}") from None
    if not desc.media:
        raise SdpError("SDP has no media section")
    if len(desc.media) > MAX_MEDIA_SECTIONS:
        raise SdpError(f"SDP has more than {MAX_MEDIA_SECTIONS} media sections")

    bundle: list[str] = []
    for group in desc.group:
        if group.semantic == "BUNDLE":
            bundle = [str(x) for x in group.items]
            break

    simulcast = _simulcast_lines(text)
    media: list[OfferedMedia] = []
    mids: set[str] = set()
    for index, m in enumerate(desc.media):
        mid = m.rtp.muxId if m.rtp.muxId is not None else str(index)
        if mid in mids:
            raise SdpError(f"duplicate mid {mid!r}")
        mids.add(mid)
        codecs = list(m.rtp.codecs) if m.kind in ("audio", "video") else []
        fid: list[tuple[int, int]] = []
        sim: list[int] = []
        for group in m.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                fid.append((int(group.items[0]), int(group.items[1])))
            elif group.semantic == "SIM" and not sim:
                sim = [int(x) for x in group.items][:MAX_LAYERS]
        extensions: dict[str, int] = {}
        for ext in m.rtp.headerExtensions:
            if 1 <= ext.id <= 14 and ext.uri not in extensions:
                extensions[ext.uri] = ext.id
        rid_lines, simulcast_line = simulcast[index] if index < len(simulcast) else ([], None)
        rids, paused = _rids(rid_lines, simulcast_line)
        media.append(
            OfferedMedia(
                index=index,
                kind=m.kind,
                mid=mid,
                protocol=m.profile,
                fmt=[str(f) for f in m.fmt],
                direction=m.direction or "sendrecv",
                rtcp_mux=m.rtcp_mux,
                codecs=codecs,
                ssrcs=[s.ssrc for s in m.ssrc],
                fid=fid,
                msid=m.msid,
                extensions=extensions,
                rids=rids,
                paused_rids=paused,
                sim_ssrcs=sim,
            )
        )

    # the transport is the bundle's first media section, or the first one
    primary = desc.media[0]
    if bundle:
        for m in desc.media:
            if m.rtp.muxId == bundle[0]:
                primary = m
                break
    if primary.ice is None:
        raise SdpError("ICE parameters missing")
    _check_ice_credentials(primary.ice)
    if primary.dtls is None or not primary.dtls.fingerprints:
        raise SdpError("DTLS fingerprint missing")
    fingerprints = [
        f for f in primary.dtls.fingerprints if f.algorithm.lower() in X509_DIGEST_ALGORITHMS
    ]
    if not fingerprints:
        raise SdpError("no supported DTLS fingerprint algorithm")
    for f in fingerprints:
        f.algorithm = f.algorithm.lower()
        if not re.match(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+$", f.value):
            raise SdpError("invalid DTLS fingerprint")
    role = primary.dtls.role or "auto"
    if role not in ("auto", "client", "server"):
        raise SdpError("invalid DTLS setup")

    candidates: list[RTCIceCandidate] = []
    complete = False
    for m in desc.media:
        if bundle and m.rtp.muxId not in bundle and m is not primary:
            continue
        candidates.extend(m.ice_candidates)
        complete = complete or m.ice_candidates_complete
    for c in candidates:
        _check_candidate(c)

    return Offer(
        media=media,
        ice=RTCIceParameters(
            usernameFragment=primary.ice.usernameFragment,
            password=primary.ice.password,
            iceLite=primary.ice.iceLite,
        ),
        dtls=RTCDtlsParameters(fingerprints=fingerprints, role=role),
        candidates=candidates,
        candidates_complete=complete,
        bundle=bundle,
    )


def _simulcast_lines(text: str) -> list[tuple[list[str], str | None]]:
    """Per media section: its ``a=rid`` values and its ``a=simulcast`` value."""
    sections: list[tuple[list[str], str | None]] = []
    for line in text.splitlines():
        if line.startswith("m="):
            sections.append(([], None))
        elif sections and line.startswith("a=rid:"):
            sections[-1][0].append(line[6:].strip())
        elif sections and line.startswith("a=simulcast:"):
            sections[-1] = (sections[-1][0], line[12:].strip())
    return sections


def _rids(rid_lines: list[str], simulcast: str | None) -> tuple[list[str], list[str]]:
    """The rids a section sends, in ``a=simulcast`` order (the ``a=rid`` order
    without one), and those marked paused (``~``). Alternatives (``a,b``):
    the first. Anything malformed: no simulcast (the section is one stream)."""
    declared = []
    for value in rid_lines:
        parts = value.split()
        if len(parts) >= 2 and parts[1] == "send" and _RID.match(parts[0]):
            declared.append(parts[0])
    if not declared:
        return [], []
    order = list(declared)
    paused: list[str] = []
    if simulcast:
        parts = simulcast.split()
        if len(parts) >= 2 and parts[0] == "send":
            order = []
            for layer in parts[1].split(";"):
                rid = layer.split(",")[0]
                if rid.startswith("~"):
                    rid = rid[1:]
                    paused.append(rid)
                if rid in declared and rid not in order:
                    order.append(rid)
    if len(order) < 2:
        return [], []
    return order[:MAX_LAYERS], [r for r in paused if r in order[:MAX_LAYERS]]


_NAMED_ORDERS = (("q", "h", "f"), ("l", "m", "h"), ("low", "mid", "high"), ("low", "medium", "high"))


def order_layers(rids: list[str]) -> tuple[list[str], bool]:
    """``rids`` low to high, and whether the SDP told the order. Chromium
    sends rids in its ``sendEncodings`` order, by convention low to high
    (``q``, ``h``, ``f``); OBS (libdatachannel) names its layers ``0``, ``1``,
    ``2`` with ``0`` the full-resolution encoder and each next one smaller.
    Other names keep the ``a=simulcast`` order until measured bitrates tell."""
    for names in _NAMED_ORDERS:
        if set(rids) <= set(names):
            return sorted(rids, key=names.index), True
    if all(r.isdigit() for r in rids):
        return sorted(rids, key=int, reverse=True), True
    return list(rids), False


def _check_candidate(c: RTCIceCandidate) -> None:
    import ipaddress

    if c.component != 1 or c.protocol.lower() not in ("udp", "tcp"):
        return  # ignored later, not an error
    if not (0 < c.port < 65536):
        raise SdpError("invalid candidate port")
    if not c.ip.endswith(".local"):
        try:
            ipaddress.ip_address(c.ip)
        except ValueError:
            raise SdpError("invalid candidate address") from None


def parse_candidate(line: str) -> RTCIceCandidate | None:
    """A trickled candidate line; ``None`` means end of candidates."""
    text = (line or "").strip()
    if text.startswith("a="):
        text = text[2:]
    if text in ("", "end-of-candidates"):
        return None
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    try:
        candidate = aiortc_sdp.candidate_from_sdp(text)
    except Exception:
        raise SdpError("unparseable candidate") from None
    _check_candidate(candidate)
    return candidate


@dataclass
class AnswerSection:
    """One media section of an answer (or of a server offer)."""

    kind: str
    mid: str
    protocol: str
    direction: str  # sendonly, recvonly, sendrecv, inactive
    codecs: list[RTCRtpCodecParameters]
    rejected: bool = False
    fmt: list[str] = field(default_factory=list)  # for rejected sections
    ssrc: int | None = None  # our SSRC when we send
    msid: str | None = None
    extensions: list[tuple[int, str]] = field(default_factory=list)  # (id, uri)
    recv_rids: list[str] = field(default_factory=list)  # simulcast layers we receive
    rtx_ssrc: int | None = None  # our RTX SSRC (RFC 4588) for ``ssrc``, when negotiated


@dataclass
class Transport:
    ice: RTCIceParameters
    fingerprints: list
    setup: str  # actpass, active, passive
    candidates: list[RTCIceCandidate]


def write_description(
    sections: list[AnswerSection],
    transport: Transport,
    *,
    session_id: int,
    version: int,
    cname: str,
) -> str:
    lines = [
        "v=0",
        f"o=- {session_id} {version} IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
    ]
    bundled = [s.mid for s in sections if not s.rejected]
    if bundled:
        lines.append("a=group:BUNDLE " + " ".join(bundled))
    lines.append("a=msid-semantic:WMS *")
    host, port = "0.0.0.0", 9
    if transport.candidates:
        host, port = transport.candidates[0].ip, transport.candidates[0].port
    for s in sections:
        if s.rejected:
            fmt = " ".join(s.fmt) or "0"
            lines.append(f"m={s.kind} 0 {s.protocol} {fmt}")
            lines.append("c=IN IP4 0.0.0.0")
            lines.append(f"a=mid:{s.mid}")
            lines.append("a=inactive")
        else:
            pts = " ".join(str(c.payloadType) for c in s.codecs)
            lines.append(f"m={s.kind} {port} {s.protocol} {pts}")
            lines.append(f"c={aiortc_sdp.ipaddress_to_sdp(host)}")
            lines.append(f"a=mid:{s.mid}")
            lines.append(f"a={s.direction}")
            if s.msid and s.direction in ("sendonly", "sendrecv"):
                lines.append(f"a=msid:{s.msid}")
            lines.append("a=rtcp-mux")
            for ext_id, uri in s.extensions:
                lines.append(f"a=extmap:{ext_id} {uri}")
            for c in s.codecs:
                lines.append(f"a=rtpmap:{c.payloadType} {c}")
                for fb in c.rtcpFeedback:
                    value = fb.type + (f" {fb.parameter}" if fb.parameter else "")
                    lines.append(f"a=rtcp-fb:{c.payloadType} {value}")
                params = aiortc_sdp.parameters_to_sdp(c.parameters)
                if params:
                    lines.append(f"a=fmtp:{c.payloadType} {params}")
            if s.recv_rids:
                for rid in s.recv_rids:
                    lines.append(f"a=rid:{rid} recv")
                lines.append("a=simulcast:recv " + ";".join(s.recv_rids))
            if s.ssrc is not None and s.direction in ("sendonly", "sendrecv"):
                # the media SSRC first: aiortc takes the second a=ssrc as RTX
                ssrcs = [s.ssrc]
                if s.rtx_ssrc is not None:
                    ssrcs.append(s.rtx_ssrc)
                    lines.append(f"a=ssrc-group:FID {s.ssrc} {s.rtx_ssrc}")
                for ssrc in ssrcs:
                    lines.append(f"a=ssrc:{ssrc} cname:{cname}")
                    if s.msid:
                        lines.append(f"a=ssrc:{ssrc} msid:{s.msid}")
        lines.append(f"a=ice-ufrag:{transport.ice.usernameFragment}")
        lines.append(f"a=ice-pwd:{transport.ice.password}")
        for f in transport.fingerprints:
            lines.append(f"a=fingerprint:{f.algorithm} {f.value}")
        lines.append(f"a=setup:{transport.setup}")
        if not s.rejected:
            for c in transport.candidates:
                lines.append("a=candidate:" + aiortc_sdp.candidate_to_sdp(c))
            lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def write_ice_fragment(
    parameters: RTCIceParameters,
    candidates: list[RTCIceCandidate],
    *,
    kind: str,
    mid: str,
) -> str:
    """An ``application/trickle-ice-sdpfrag`` body (RFC 8840) with our ICE
    credentials and candidates, for the media section ``kind``/``mid`` (the
    first of the bundle), as the answer to an ICE restart (RFC 9725 4.4.1)."""
    lines = [
        f"a=ice-ufrag:{parameters.usernameFragment}",
        f"a=ice-pwd:{parameters.password}",
        f"m={kind} 9 UDP/TLS/RTP/SAVPF 0",
        f"a=mid:{mid}",
    ]
    lines += ["a=candidate:" + aiortc_sdp.candidate_to_sdp(c) for c in candidates]
    lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


__all__ = [
    "EXT_ABS_SEND_TIME",
    "EXT_MID",
    "EXT_REPAIRED_RID",
    "EXT_RID",
    "PUBLISHER_EXTENSIONS",
    "SUBSCRIBER_EXTENSIONS",
    "AnswerSection",
    "Offer",
    "OfferedMedia",
    "Transport",
    "ice_parameters",
    "order_layers",
    "parse_candidate",
    "parse_offer",
    "write_description",
    "write_ice_fragment",
]
