"""Forwarding of one publisher track to its subscribers, at the RTP level.

An :class:`UpTrack` is one media track a publisher sends; it has one
:class:`Layer` per RTP stream: one for a plain track, one per simulcast
layer (``a=rid``), ordered low to high. A layer receives the publisher's
decrypted RTP packets as bytes, strips the header extensions and CSRCs,
writes the track's outgoing SSRC (one per up track, shared by its
subscribers: SSRCs only need to be unique inside each subscriber's own RTP
session), stores the packet in its history for NACKs, and sends it on:

* to *plain* down tracks (those that have received this one layer since they
  started, unchanged sequence numbers and timestamps) as the same bytes per
  group of subscribers sharing a payload type and abs-send-time extension id:
  the fast path, one ``bytes`` per group;
* to *rewriting* down tracks (those that switched layer, paused, or padded)
  one by one, each with its own sequence number, timestamp and (VP8) picture
  id / TL0PICIDX offsets, so that what each receives is one continuous stream.

A :class:`DownTrack` is one subscriber's view of an up track: its payload
type, its layer (chosen by :class:`~sfu.bandwidth.LayerPolicy` from the
subscriber's REMB and reports, within its preference), and the RTCP feedback
it sends (NACK answered from the history, PLI and FIR relayed to the
publisher as PLI for its layer, at most once per second per layer).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any, Protocol

from aiortc import clock
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
)

from . import metrics, rtx
from .bandwidth import DownlinkEstimate, LayerPolicy

logger = logging.getLogger(__name__)

HISTORY_SIZE = 1024  # packets kept per layer for retransmission (power of two)
KEYFRAME_INTERVAL = 1.0  # seconds between two PLIs to one publisher layer
MAX_NACK_GAP = 200  # a larger jump in sequence numbers is a reset, not loss
NACK_RETRIES = 3
KEYFRAME_WAIT = 4.0  # seconds a waiting subscriber waits for a keyframe before starting anyway
LAYER_GONE = 2.0  # seconds without a packet after which a layer counts as not sent
PADDING_SIZE = 255  # bytes of padding in one padding-only probe packet
MAX_PADDING_BURST = 64  # padding packets sent at one frame end
# GOP cache (fast first frame): a layer's last keyframe and the packets since,
# read from its history; bounded so that a replay fits the history and is short
GOP_MAX_PACKETS = 768  # more since the keyframe: no cache until the next one
GOP_MAX_BYTES = 1_500_000
GOP_REPLAY_RATE = 8_000_000  # bits/s a replay sends at most (the viewer's estimate is unknown yet)
GOP_REPLAY_BURST = 16_000  # bytes a replay may send in one go
GOP_FIRST_BURST = 64_000  # bytes its first step may send: the keyframe at once, as live would
GOP_REPLAY_TICK = 0.005  # seconds between two replay steps
GOP_CATCH_UP = 1.0  # seconds a replay may take to reach live; a longer one is not started
# Answers to a subscriber's NACKs: a packet is resent at most once a round trip
# (a later NACK for it crossed the repair on the way), and all repairs together
# at most at the rate of the media they repair, so that NACKs (its own, or a
# client's looping over the same list) never multiply what a subscriber costs
RESEND_GAP_UNKNOWN_RTT = 0.1  # seconds between two resends of a packet before the RTT is known
RESEND_MIN_BPS = 500_000  # the repair budget of a layer slower than this (audio, a low layer)
RESEND_BURST_SECONDS = 0.5  # of that budget, what one loss burst may spend at once

_pack_ssrc = struct.Struct("!I").pack
_pack_header = struct.Struct("!BBHII").pack
_MASK = HISTORY_SIZE - 1

Target = tuple[Any, Any, Any]  # (protect, sendto, addr)
Vp8Ids = tuple[int, int, int]  # (picture id offset in payload, its bits 7/15/0, TL0PICIDX offset or 0)


class RtcpSender(Protocol):
    def send_rtcp(self, packet: bytes) -> None: ...


class PublisherLink(Protocol):
    """What an up track needs of its publisher's session."""

    @property
    def id(self) -> str: ...

    @property
    def rtcp_ssrc(self) -> int: ...

    @property
    def sender(self) -> RtcpSender | None: ...


class SubscriberLink(Protocol):
    """What is asked of a down track's subscriber session (by the publisher's
    session, relaying a call party's downlink as its REMB)."""

    @property
    def downlink(self) -> DownlinkEstimate: ...


def abs_send_time(ext_id: int, now: float) -> bytes:
    """A one-byte header extension block holding abs-send-time (6.18 fixed point seconds)."""
    t = int(now * 262144) & 0xFFFFFF
    return bytes((0xBE, 0xDE, 0, 1, (ext_id << 4) | 2, t >> 16, (t >> 8) & 0xFF, t & 0xFF))


def _with_extension(buf: bytearray, ext: bytes) -> bytes:
    """``buf`` (a 12-byte header, no extension) with the extension block ``ext`` inserted."""
    buf[0] |= 0x10
    return bytes(buf[:12]) + ext + buf[12:]


class UpTrack:
    """One media track a publisher sends into a room: one or more layers."""

    def __init__(
        self,
        publisher: PublisherLink,
        *,
        kind: str,
        mid: str,
        codec: RTCRtpCodecParameters,
        ssrcs: list[int],
        out_ssrc: int,
        fir_only: bool = False,
        rids: list[str] | None = None,
        rid_order_known: bool = True,
        gop_max_age: float = 0.0,
    ) -> None:
        self.publisher = publisher
        self.kind = kind
        self.mid = mid
        self.codec = codec
        self.declared_ssrcs = list(ssrcs)
        self.out_ssrc = out_ssrc
        self.track_id = f"{kind}-{out_ssrc:08x}"
        self.clock_rate = codec.clockRate
        self.fir_only = fir_only
        self.codec_name = codec.mimeType.split("/")[-1].lower()
        self.ssrc_bytes = _pack_ssrc(out_ssrc)
        # seconds a cached keyframe may start a new viewer (0: no GOP cache)
        self.gop_max_age = gop_max_age if kind == "video" and self.codec_name in (
            "vp8", "h264") else 0.0
        self.down: list[DownTrack] = []
        self.closed = False
        # the publisher's RTX payload type (RFC 4588) for this track, when
        # negotiated: one for all its layers, each layer on its own RTX SSRC
        self.rtx_payload_type: int | None = None
        # rids low to high; when the SDP did not tell their order, the
        # measured bitrates decide it once every layer is flowing
        self._order_known = rid_order_known
        if rids:
            self.layers = [Layer(self, rid, None) for rid in rids]
            for i, ssrc in enumerate(ssrcs[: len(rids)]):
                self.layers[i].ssrc = ssrc
        else:
            self.layers = [Layer(self, None, ssrcs[0] if ssrcs else None)]
        self._number_layers()

    def _number_layers(self) -> None:
        simulcast = len(self.layers) > 1
        for i, layer in enumerate(self.layers):
            layer.index = i
            layer.parse_vp8_ids = simulcast and self.codec_name == "vp8"

    @property
    def simulcast(self) -> bool:
        return len(self.layers) > 1

    def layer_by_rid(self, rid: str) -> Layer | None:
        for layer in self.layers:
            if layer.rid == rid:
                return layer
        return None

    # the single-layer view (a plain track is its one layer)

    @property
    def in_ssrc(self) -> int | None:
        return self.layers[0].ssrc

    def on_rtp(self, data: bytes) -> None:
        self.layers[0].on_rtp(data)

    def history(self, seq: int) -> bytes | None:
        return self.layers[0].history(seq)

    @property
    def packets(self) -> int:
        return sum(layer.packets for layer in self.layers)

    @property
    def forwarded(self) -> int:
        return sum(layer.forwarded for layer in self.layers)

    @property
    def forwarded_bytes(self) -> int:
        return sum(layer.forwarded_bytes for layer in self.layers)

    @property
    def keyframe_requests(self) -> int:
        return sum(layer.keyframe_requests for layer in self.layers)

    def request_keyframe(self) -> None:
        """A keyframe on every layer that someone receives or waits for."""
        for layer in self.layers:
            if layer.wanted():
                layer.request_keyframe()

    def wants_keyframe_on_connect(self) -> None:
        for layer in self.layers:
            if layer.pli_wanted:
                layer.pli_wanted = False
                layer.request_keyframe()

    # -- subscribers ---------------------------------------------------------------------

    def attach(self, down: DownTrack) -> None:
        """Start forwarding to ``down`` at the next keyframe of its first layer."""
        if down in self.down:
            return
        self.down.append(down)
        layer = self.start_layer(down.max_layer)
        down.wanted = layer
        if layer.gop_max_age and down.from_cache and down.replay_from(layer):
            return  # started from the cached keyframe: no keyframe request
        if layer.gop_max_age:
            metrics.GOP_STALE.inc()
        layer.add_pending(down)

    def start_layer(self, max_layer: int | None) -> Layer:
        """The highest layer that is flowing (within ``max_layer``), or the
        highest one when none is flowing yet."""
        top = len(self.layers) - 1 if max_layer is None else min(max_layer, len(self.layers) - 1)
        now = time.monotonic()
        for layer in reversed(self.layers[: top + 1]):
            if layer.bitrate > 0 or (layer.packets and now - layer.last_ts_time < 1.0):
                return layer
        return self.layers[top]

    def detach(self, down: DownTrack) -> None:
        for layer in self.layers:
            layer.remove(down)
        if down in self.down:
            self.down.remove(down)

    def rebuild(self) -> None:
        for layer in self.layers:
            layer.rebuild()

    # -- feedback to the publisher, statistics ---------------------------------------------

    def periodic(self) -> list[Any]:
        """Once a second: RR blocks for the publisher, NACK retries, bitrates, metrics."""
        reports = []
        for layer in self.layers:
            reports.extend(layer.periodic())
        if not self._order_known and all(layer.bitrate > 0 for layer in self.layers):
            ordered = sorted(self.layers, key=lambda layer: layer.bitrate)
            if ordered != self.layers:
                self.layers = ordered
                self._number_layers()
            self._order_known = True
        return reports

    def flush_metrics(self) -> None:
        for layer in self.layers:
            layer.flush_metrics()

    def close(self) -> None:
        self.closed = True
        for layer in self.layers:
            layer.close()
        self.down.clear()


class Layer:
    """One RTP stream (SSRC) of an up track: the track, or one simulcast layer."""

    def __init__(self, track: UpTrack, rid: str | None, ssrc: int | None) -> None:
        self.track = track
        self.rid = rid
        self.ssrc = ssrc
        self.index = 0  # position, low to high
        self.parse_vp8_ids = False
        self._ssrc_bytes = track.ssrc_bytes
        self._codec_name = track.codec_name
        self._video = track.kind == "video"
        self._nack = self._video
        self.plain: list[DownTrack] = []
        self.rewriting: list[DownTrack] = []
        self.replaying: list[DownTrack] = []  # new viewers sent the GOP cache, not yet live
        self.padders: list[DownTrack] = []  # paused subscribers probing at our frame ends
        # subscribers that wait for a keyframe (video) or a frame boundary to
        # start on this layer or switch to it
        self._pending: list[DownTrack] = []
        self._pending_since = 0.0
        self._frame_start = True  # the next packet starts a frame
        self._fanout: tuple[tuple[int, int, tuple[Target, ...]], ...] = ()
        # rewriting subscribers with the same offsets share their bytes too
        self._rewrite_fanout: tuple[tuple[tuple[int, ...], tuple[Target, ...]], ...] = ()
        self._probing: tuple[DownTrack, ...] = ()  # padding: one by one
        self._history: list[bytes | None] = [None] * HISTORY_SIZE
        # the GOP cache: where the last keyframe starts in the history
        self.gop_max_age = track.gop_max_age
        self.gop_seq: int | None = None
        self.gop_ts = 0
        self.gop_at = 0.0
        self.gop_packets = 0
        self.gop_bytes = 0

        # counters, flushed to prometheus in batches
        self.packets = 0
        self.octets = 0
        self.forwarded = 0
        self.forwarded_bytes = 0
        self._flushed = (0, 0, 0)

        # bitrate over the last second or two (bits/s), for the layer choice
        self.bitrate = 0.0
        self._bitrate_measured = False
        self._rate_mark = (0, time.monotonic())

        # upstream receive statistics (for RR) and loss (for NACK)
        self._base_seq: int | None = None
        self.max_seq: int | None = None
        self._cycles = 0
        self._expected_prior = 0
        self._received_prior = 0
        self.missing: dict[int, int] = {}
        self.last_ts = 0
        self.last_ts_time = 0.0
        self.last_picture_id = -1
        self.last_tl0 = -1
        self._sr: tuple[int, int, float] | None = None  # (ntp, rtp ts, monotonic)

        # keyframe relay
        self._last_pli = -KEYFRAME_INTERVAL
        self._pli_handle: asyncio.TimerHandle | None = None
        self.pli_wanted = False
        self._fir_seq = 0
        self.keyframe_requests = 0

    def __repr__(self) -> str:
        return f"Layer({self.index} rid={self.rid!r} ssrc={self.ssrc})"

    # -- the forwarding path -----------------------------------------------------------

    def on_rtp(self, data: bytes) -> None:
        n = len(data)
        b0 = data[0]
        hlen = 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x10:
            if n < hlen + 4:
                return
            hlen += 4 + (((data[hlen + 2] << 8) | data[hlen + 3]) << 2)
        if n < hlen:
            return
        seq = (data[2] << 8) | data[3]
        self.packets += 1
        self.octets += n

        # loss and statistics, in the common case one comparison
        last = self.max_seq
        if last is not None and seq == ((last + 1) & 0xFFFF):
            self.max_seq = seq
            if seq == 0:
                self._cycles += 0x10000
        else:
            self._track_sequence(seq)

        ts = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7]
        if ts != self.last_ts:
            self.last_ts = ts
            self.last_ts_time = time.monotonic()

        vp8: Vp8Ids | None = None
        if b0 & 0x20 and n - data[-1] <= hlen:
            pass  # padding only (a sender's probe): no frame starts or ends here
        else:
            if self.parse_vp8_ids:
                vp8 = vp8_picture_ids(data, hlen)
                if vp8 is not None:
                    pos, bits, tl0 = vp8
                    if bits == 15:
                        self.last_picture_id = ((data[hlen + pos] & 0x7F) << 8) | data[hlen + pos + 1]
                    elif bits == 7:
                        self.last_picture_id = data[hlen + pos] & 0x7F
                    if tl0:
                        self.last_tl0 = data[hlen + tl0]

            if self._frame_start and (self._pending or self.gop_max_age):
                key = self._keyframe_start(data, hlen)
                if key and self.gop_max_age:
                    self.gop_seq, self.gop_ts, self.gop_at = seq, ts, self.last_ts_time
                    self.gop_packets = self.gop_bytes = 0
                if self._pending and (
                    key or time.monotonic() - self._pending_since > KEYFRAME_WAIT
                ):
                    self._activate_pending(seq, ts)
            # marker: the last packet of a video frame; every audio packet is a
            # frame (Chromium marks only a talkspurt's first one)
            self._frame_start = data[1] >= 0x80 or not self._video

        if hlen == 12:
            base = bytearray(data)
        else:
            base = bytearray(data[:12])
            base += data[hlen:]
        base[0] = 0x80 | (b0 & 0x20)
        base[8:12] = self._ssrc_bytes
        self._history[seq & _MASK] = bytes(base)

        mbit = base[1] & 0x80
        size = len(base)
        if self.gop_seq is not None:
            self.gop_packets += 1
            self.gop_bytes += size
            if self.gop_packets > GOP_MAX_PACKETS or self.gop_bytes > GOP_MAX_BYTES:
                self.gop_seq = None  # too long a GOP to replay: none until the next keyframe
        if self._fanout:
            ext_now = 0.0
            payload = b""
            for pt, abs_id, targets in self._fanout:
                if abs_id:
                    if not ext_now:
                        ext_now = time.monotonic()
                        payload = bytes(base[12:])
                    head = bytearray(base[:12])
                    head[0] |= 0x10
                    head[1] = mbit | pt
                    packet = bytes(head) + abs_send_time(abs_id, ext_now) + payload
                else:
                    base[1] = mbit | pt
                    packet = bytes(base)
                try:
                    for protect, sendto, addr in targets:
                        sendto(protect(packet), addr)
                except Exception:  # noqa: BLE001 - one bad subscriber must not stop the others
                    _send_each(packet, targets)
                self.forwarded += len(targets)
                self.forwarded_bytes += len(targets) * size
        if self._rewrite_fanout:
            # one header (and VP8 descriptor) per group, the payload shared
            first = base[0]
            ssrc = self.track.out_ssrc
            cut = 12
            if vp8 is not None:
                cut = 13 + max(vp8[0] + (2 if vp8[1] == 15 else 1), vp8[2])
            rest = bytes(base[cut:])
            for (pt, abs_id, seq_off, ts_off, pid_off, tl0_off), targets in self._rewrite_fanout:
                head = _pack_header(first, mbit | pt, (seq + seq_off) & 0xFFFF,
                                    (ts + ts_off) & 0xFFFFFFFF, ssrc)
                if abs_id:
                    head = bytes((first | 0x10,)) + head[1:] + abs_send_time(
                        abs_id, time.monotonic()
                    )
                if cut > 12:
                    descriptor = bytearray(12) + base[12:cut]
                    if pid_off or tl0_off:
                        _shift_vp8_ids(descriptor, vp8, pid_off, tl0_off)  # type: ignore[arg-type]
                    packet = head + descriptor[12:] + rest
                else:
                    packet = head + rest
                try:
                    for protect, sendto, addr in targets:
                        sendto(protect(packet), addr)
                except Exception:  # noqa: BLE001
                    _send_each(packet, targets)
                self.forwarded += len(targets)
                self.forwarded_bytes += len(targets) * size
        if self._probing:
            for down in self._probing:
                down.forward(base, seq, ts, mbit, vp8)
            self.forwarded += len(self._probing)
            self.forwarded_bytes += len(self._probing) * size
        if mbit and self.padders:
            for down in self.padders:
                down.pad_paused()

        if self.pli_wanted and self.ssrc is not None:
            self.pli_wanted = False
            self.request_keyframe()

    def on_repair(self, data: bytes) -> bool:
        """A packet the publisher resent over RTX, unwrapped: forwarded like any
        late packet, unless the history already holds it (a duplicate, e.g.
        RTX used as padding). True when it was new."""
        if self.history((data[2] << 8) | data[3]) is not None:
            return False
        self.on_rtp(data)
        return True

    def _track_sequence(self, seq: int) -> None:
        last = self.max_seq
        if last is None:
            self._base_seq = seq
            self.max_seq = seq
            return
        delta = (seq - last) & 0xFFFF
        if delta == 0:
            return
        if delta < 0x8000:  # forward jump
            if delta <= MAX_NACK_GAP and self._nack:
                for i in range(1, delta):
                    self.missing[(last + i) & 0xFFFF] = 0
                self._send_nack()
            if seq < last:
                self._cycles += 0x10000
            self.max_seq = seq
        else:  # late: a retransmission or reordering
            self.missing.pop(seq, None)

    # -- subscribers ---------------------------------------------------------------------

    def wanted(self) -> bool:
        return bool(self.plain or self.rewriting or self._pending or self.replaying)

    def add_pending(self, down: DownTrack) -> None:
        """``down`` starts on (or switches to) this layer at its next keyframe."""
        if down not in self._pending:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(down)
        self.request_keyframe()

    def _keyframe_start(self, data: bytes, hlen: int) -> bool:
        """Whether this packet, the first of a frame, starts a keyframe (VP8:
        the S bit on partition 0 and P=0; H.264: SPS, IDR, a STAP-A holding
        one, an FU-A starting one); True for codecs we cannot tell about."""
        if self._codec_name == "vp8":
            return vp8_keyframe_start(data, hlen)
        if self._codec_name == "h264":
            return h264_keyframe_start(data, hlen)
        return True

    def gop_fresh(self, now: float) -> bool:
        """Whether the cached keyframe may start a new viewer: there is one,
        within the bounds, and at most ``gop_max_age`` old."""
        return self.gop_seq is not None and now - self.gop_at <= self.gop_max_age

    def _activate_pending(self, seq: int, ts: int) -> None:
        pending, self._pending = self._pending, []
        now = time.monotonic()
        for down in pending:
            if down.wanted is self:
                down.join(self, seq, ts, now)
        self.track.rebuild()

    def remove_pending(self, down: DownTrack) -> None:
        if down in self._pending:
            self._pending.remove(down)

    def remove(self, down: DownTrack) -> None:
        changed = False
        for group in (self.plain, self.rewriting, self._pending, self.padders, self.replaying):
            if down in group:
                group.remove(down)
                changed = True
        if changed:
            self.rebuild()

    def rebuild(self) -> None:
        """Group the subscribers that can share bytes (after any change of
        membership, target or offsets)."""
        groups: dict[tuple[int, int], list[Target]] = {}
        for d in self.plain:
            if d.target is not None:
                groups.setdefault((d.payload_type, d.abs_send_time_id), []).append(d.target)
        self._fanout = tuple((pt, ext, tuple(ts)) for (pt, ext), ts in groups.items())
        rewriting: dict[tuple[int, ...], list[Target]] = {}
        probing = []
        for d in self.rewriting:
            if d.target is None:
                continue
            if d.probing:
                probing.append(d)
            else:
                rewriting.setdefault(d.offsets(), []).append(d.target)
        self._rewrite_fanout = tuple((key, tuple(ts)) for key, ts in rewriting.items())
        self._probing = tuple(probing)

    def history(self, seq: int) -> bytes | None:
        packet = self._history[seq & _MASK]
        if packet is not None and ((packet[2] << 8) | packet[3]) == seq:
            return packet
        return None

    # -- feedback to the publisher ---------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe on this layer: now, or when the 1 s spacing allows."""
        if self.track.kind != "video" or self.track.closed:
            return
        if self.ssrc is None:
            self.pli_wanted = True
            return
        if self._pli_handle is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_pli + KEYFRAME_INTERVAL - loop.time()
        if wait <= 0:
            self._send_pli()
        else:
            self._pli_handle = loop.call_later(wait, self._deferred_pli)

    def _deferred_pli(self) -> None:
        self._pli_handle = None
        if not self.track.closed:
            self._send_pli()

    def _send_pli(self) -> None:
        sender = self.track.publisher.sender
        if sender is None or self.ssrc is None:
            self.pli_wanted = True
            return
        self._last_pli = asyncio.get_running_loop().time()
        rtcp_ssrc = self.track.publisher.rtcp_ssrc
        if self.track.fir_only:
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            fci = _pack_ssrc(self.ssrc) + bytes([self._fir_seq, 0, 0, 0])
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
        else:
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=rtcp_ssrc, media_ssrc=self.ssrc)
        try:
            sender.send_rtcp(bytes(packet))
        except Exception as exc:  # noqa: BLE001
            logger.debug("PLI failed: %s", exc)
            return
        self.keyframe_requests += 1
        metrics.KEYFRAME_REQUESTS.inc()

    def _send_nack(self) -> None:
        sender = self.track.publisher.sender
        if sender is None or self.ssrc is None or not self.missing:
            return
        lost = sorted(self.missing)[:64]
        packet = RtcpRtpfbPacket(
            fmt=RTCP_RTPFB_NACK, ssrc=self.track.publisher.rtcp_ssrc, media_ssrc=self.ssrc
        )
        packet.lost = lost
        try:
            sender.send_rtcp(bytes(packet))
        except Exception as exc:  # noqa: BLE001
            logger.debug("NACK failed: %s", exc)
            return
        metrics.NACKS_SENT.inc()

    def on_sender_report(self, ntp: int, rtp_ts: int) -> None:
        self._sr = (ntp, rtp_ts, time.monotonic())

    def _measure(self) -> None:
        octets, since = self._rate_mark
        now = time.monotonic()
        elapsed = now - since
        if elapsed < 0.25:
            return
        rate = (self.octets - octets) * 8 / elapsed
        if not self._bitrate_measured:
            self.bitrate = rate
        elif rate == 0 and now - self.last_ts_time > LAYER_GONE:
            self.bitrate = 0.0  # the publisher stopped sending this layer
        else:
            self.bitrate = 0.5 * self.bitrate + 0.5 * rate
        self._bitrate_measured = True
        self._rate_mark = (self.octets, now)

    def periodic(self) -> list[Any]:
        """Once a second: RR block, NACK retries, bitrate, metrics, keyframe
        for subscribers still waiting to switch here."""
        self.flush_metrics()
        self._measure()
        if self._pending and time.monotonic() - self._pending_since > KEYFRAME_INTERVAL:
            self.request_keyframe()
        if self.missing:
            for seq in list(self.missing):
                tries = self.missing[seq] + 1
                if tries > NACK_RETRIES:
                    del self.missing[seq]
                else:
                    self.missing[seq] = tries
            self._send_nack()
        if self.ssrc is None or self.max_seq is None or self._base_seq is None:
            return []
        expected = self._cycles + self.max_seq - self._base_seq + 1
        lost = max(0, expected - self.packets)
        exp_int = expected - self._expected_prior
        rec_int = self.packets - self._received_prior
        self._expected_prior, self._received_prior = expected, self.packets
        fraction = 0
        if exp_int > 0 and exp_int > rec_int:
            fraction = min(255, ((exp_int - rec_int) << 8) // exp_int)
        lsr = dlsr = 0
        if self._sr is not None:
            lsr = (self._sr[0] >> 16) & 0xFFFFFFFF
            dlsr = int((time.monotonic() - self._sr[2]) * 65536) & 0xFFFFFFFF
        return [
            RtcpReceiverInfo(
                ssrc=self.ssrc,
                fraction_lost=fraction,
                packets_lost=min(lost, (1 << 23) - 1),
                highest_sequence=(self._cycles + self.max_seq) & 0xFFFFFFFF,
                jitter=0,
                lsr=lsr,
                dlsr=dlsr,
            )
        ]

    def clock_now(self) -> tuple[int, int]:
        """(NTP time, RTP timestamp) for a sender report about this layer now,
        keeping the publisher's own NTP/RTP mapping when it sent one."""
        now = time.monotonic()
        clock_rate = self.track.clock_rate
        if self._sr is not None:
            ntp, rtp_ts, at = self._sr
            elapsed = now - at
            return (
                (ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF,
                (rtp_ts + int(elapsed * clock_rate)) & 0xFFFFFFFF,
            )
        elapsed = now - self.last_ts_time if self.last_ts_time else 0.0
        return clock.current_ntp_time(), (self.last_ts + int(elapsed * clock_rate)) & 0xFFFFFFFF

    def flush_metrics(self) -> None:
        p, f, b = self._flushed
        if self.packets != p:
            metrics.PACKETS_RECEIVED.inc(self.packets - p)
        if self.forwarded != f:
            metrics.PACKETS_FORWARDED.inc(self.forwarded - f)
        if self.forwarded_bytes != b:
            metrics.BYTES_FORWARDED.inc(self.forwarded_bytes - b)
        self._flushed = (self.packets, self.forwarded, self.forwarded_bytes)

    def close(self) -> None:
        self.flush_metrics()
        if self._pli_handle is not None:
            self._pli_handle.cancel()
            self._pli_handle = None
        self._fanout = self._rewrite_fanout = self._probing = ()
        self.plain.clear()
        self.rewriting.clear()
        self.replaying.clear()
        self.padders.clear()
        self._pending.clear()


def _send_each(packet: bytes, targets: tuple[Target, ...]) -> None:
    for protect, sendto, addr in targets:
        try:
            sendto(protect(packet), addr)
        except Exception as exc:  # noqa: BLE001
            logger.debug("forward failed: %s", exc)


class _Sent:
    """Where a down track's stream stood when it left a layer: what the next
    layer's offsets continue from."""

    __slots__ = ("seq", "ts", "picture_id", "tl0", "at")

    def __init__(self, seq: int, ts: int, picture_id: int, tl0: int, at: float) -> None:
        self.seq = seq
        self.ts = ts
        self.picture_id = picture_id
        self.tl0 = tl0
        self.at = at


class _Replay:
    """A new viewer being sent its layer's GOP cache: the next sequence number
    to send, and the timestamp squeeze (cached frames keep their sequence
    numbers; their timestamps are drawn together toward ``anchor``, the
    newest cached one, so that the viewer plays them through quickly and is
    at live when the replay is)."""

    __slots__ = ("first", "next", "anchor", "span", "factor", "credit", "at")

    def __init__(self, first: int, anchor: int, span: int, factor: float, now: float) -> None:
        self.first = first
        self.next = first
        self.anchor = anchor
        self.span = span
        self.factor = factor
        self.credit = float(GOP_FIRST_BURST)
        self.at = now

    def timestamp(self, ts: int) -> int:
        back = (self.anchor - ts) & 0xFFFFFFFF
        if back > self.span:
            return ts  # newer than the cache (arrived during the replay): as it is
        return (self.anchor - int(back * self.factor)) & 0xFFFFFFFF


class DownTrack:
    """One subscriber's copy of an up track."""

    def __init__(
        self,
        session: SubscriberLink | None,
        up: UpTrack,
        *,
        mid: str,
        payload_type: int,
        abs_send_time_id: int = 0,
        from_cache: bool = True,
    ) -> None:
        self.session = session
        # may start from its layer's GOP cache (a viewer); a recorder keeps
        # real timestamps and waits for a keyframe instead
        self.from_cache = from_cache
        self.up = up
        self.mid = mid
        self.payload_type = payload_type
        self.abs_send_time_id = abs_send_time_id  # 0: not negotiated
        self.ssrc = up.out_ssrc
        # RTX (RFC 4588) toward this subscriber, when it offered it: payload
        # type, SSRC and the RTX stream's own sequence numbers
        self.rtx_payload_type: int | None = None
        self.rtx_ssrc: int | None = None
        self._rtx_ssrc_bytes = b""
        self._rtx_seq = 0
        self.target: Target | None = None
        self.layer: Layer | None = None  # the layer sent now (None: not started, or paused)
        self.wanted: Layer | None = None  # the layer it starts on or switches to next
        self.paused = False
        self.max_layer: int | None = None  # the subscriber's own cap
        self.switches = 0
        self.nacks = 0
        self.retransmitted = 0
        self.resends_skipped = 0  # NACKed packets not resent: resent a round trip ago, or over budget
        self._resent: dict[int, float] = {}  # our sequence number -> when it was last resent
        self._resend_credit = 0.0  # bytes the repairs may still send now
        self._resend_time = 0.0
        self.keyframe_requests = 0
        self.fraction_lost = 0.0
        self.rtt: float | None = None
        self.policy = LayerPolicy()
        # the GOP cache replay at the start (None once live); what it sent
        self._replay: _Replay | None = None
        self._replayed: _Replay | None = None
        self._replay_handle: asyncio.TimerHandle | None = None
        self.replayed = 0
        # own stream state, for a rewriting subscriber
        self.rewrites = False
        self._seq_off = 0
        self._ts_off = 0
        self._pid_off = 0
        self._tl0_off = 0
        self._left: _Sent | None = None
        # NACKs: our sequence number minus _seq_off is the layer's, from
        # _offset_since on; before that (padding changed the offset) the map says
        self._offset_since = 0
        self._out_map: list[int] = []
        self._probe_bps = 0
        self._pad_credit = 0.0
        self._pad_time = 0.0
        self._sr_sent: dict[int, float] = {}
        self._base = (0, 0)

    # -- life ---------------------------------------------------------------------------

    def start(self, target: Target) -> None:
        if self.up.closed:
            return
        self.target = target
        self._base = (self.up.forwarded, self.up.forwarded_bytes)
        self.up.attach(self)

    def retarget(self, target: Target | None) -> None:
        self.target = target
        self.up.rebuild()

    def stop(self) -> None:
        self._end_replay()
        self.up.detach(self)
        self.target = None
        self.layer = self.wanted = None
        if self.paused:
            self.paused = False
            metrics.PAUSED_VIEWERS.dec()

    # -- layers ---------------------------------------------------------------------------

    def replay_from(self, layer: Layer) -> bool:
        """Start on ``layer`` from its cached keyframe: send the keyframe and
        the packets since at up to GOP_REPLAY_RATE, with their own sequence
        numbers and squeezed timestamps, then join the layer's live packets
        (plain: the numbering already continues). False, and nothing done, when
        the cache is stale or too long to catch up within GOP_CATCH_UP."""
        now = time.monotonic()
        start, end = layer.gop_seq, layer.max_seq
        if not layer.gop_fresh(now) or start is None or end is None or self.target is None:
            return False
        headroom = GOP_REPLAY_RATE - layer.bitrate
        if headroom <= 0 or layer.gop_bytes * 8 / headroom > GOP_CATCH_UP:
            return False
        newest = layer.history(end)
        anchor = int.from_bytes(newest[4:8], "big") if newest is not None else layer.last_ts
        span = (anchor - layer.gop_ts) & 0xFFFFFFFF
        if span >= 0x80000000:
            span = 0
        duration = layer.gop_bytes * 8 / GOP_REPLAY_RATE  # how long sending the cache takes
        factor = min(1.0, duration * self.up.clock_rate / span) if span else 1.0
        self._replay = self._replayed = _Replay(start, anchor, span, factor, now)
        self.layer = self.wanted = layer
        layer.replaying.append(self)
        metrics.GOP_REPLAYS.labels("started").inc()
        self._replay_step()
        return True

    def _replay_step(self) -> None:
        self._replay_handle = None
        replay, layer, target = self._replay, self.layer, self.target
        if replay is None or layer is None or target is None or self not in layer.replaying:
            self._replay = None
            return
        now = time.monotonic()
        replay.credit = min(
            replay.credit + GOP_REPLAY_RATE / 8 * (now - replay.at), float(GOP_REPLAY_BURST)
        )
        replay.at = now
        end = layer.max_seq if layer.max_seq is not None else replay.next
        protect, sendto, addr = target
        seq = replay.next
        while True:
            if seq == (end + 1) & 0xFFFF:  # at live: from now on the shared bytes
                self._replay = None
                layer.replaying.remove(self)
                layer.plain.append(self)
                layer.rebuild()
                metrics.GOP_REPLAYS.labels("caught_up").inc()
                return
            if (end - seq) & 0xFFFF >= HISTORY_SIZE - 64:  # the history moved on without us
                self._replay = None
                layer.replaying.remove(self)
                self.layer = None
                layer.add_pending(self)
                metrics.GOP_REPLAYS.labels("fell_back").inc()
                return
            if replay.credit <= 0:
                break
            packet = layer.history(seq)
            if packet is not None:
                buf = bytearray(packet)
                buf[1] = (buf[1] & 0x80) | self.payload_type
                buf[4:8] = _pack_ssrc(replay.timestamp(int.from_bytes(packet[4:8], "big")))
                if self.abs_send_time_id:
                    data = _with_extension(buf, abs_send_time(self.abs_send_time_id, now))
                else:
                    data = bytes(buf)
                try:
                    sendto(protect(data), addr)
                except Exception as exc:  # noqa: BLE001
                    logger.debug("replay failed: %s", exc)
                replay.credit -= len(data)
                self.replayed += 1
            seq = (seq + 1) & 0xFFFF
        replay.next = seq
        self._replay_handle = asyncio.get_running_loop().call_later(
            GOP_REPLAY_TICK, self._replay_step
        )

    def _end_replay(self) -> None:
        self._replay = None
        if self._replay_handle is not None:
            self._replay_handle.cancel()
            self._replay_handle = None

    def join(self, layer: Layer, seq: int, ts: int, now: float) -> None:
        """Called by ``layer`` at the keyframe that starts this subscriber on it."""
        old = self.layer
        if old is not None:
            self._left = self._position(old)
            old.remove(self)
            self._end_replay()
        for other in self.up.layers:
            if other is not layer:
                other.remove(self)
        if self in layer.padders:
            layer.padders.remove(self)
        left = self._left
        if left is None and not self.rewrites:
            layer.plain.append(self)
        else:
            self._start_rewriting()
            if left is not None:
                self._offset_since = (left.seq + 1) & 0xFFFF
                self._seq_off = (left.seq + 1 - seq) & 0xFFFF
                step = max(1, int((now - left.at) * self.up.clock_rate))
                self._ts_off = (left.ts + step - ts) & 0xFFFFFFFF
                self._pid_off = 0
                if left.picture_id >= 0 and layer.last_picture_id >= 0:
                    self._pid_off = (left.picture_id + 1 - layer.last_picture_id) & 0x7FFF
                self._tl0_off = 0
                if left.tl0 >= 0 and layer.last_tl0 >= 0:
                    self._tl0_off = (left.tl0 + 1 - layer.last_tl0) & 0xFF
            layer.rewriting.append(self)
        changed = old is not None or self.paused
        if changed:
            self.switches += 1
            metrics.LAYER_SWITCHES.inc()
        if self.paused:
            self.paused = False
            metrics.PAUSED_VIEWERS.dec()
        self.layer = layer
        self._left = None
        self.wanted = layer
        if changed and old is not layer:
            self._announce()

    def _announce(self) -> None:
        """Our session hears that the layer we send changed (a pause included)."""
        if self.session is not None:
            self.session.layer_changed(self)

    def _start_rewriting(self) -> None:
        """From now on our own sequence numbers (a fresh map back to the layer's)."""
        self.rewrites = True
        self._out_map = [-1] * HISTORY_SIZE

    def _position(self, layer: Layer) -> _Sent:
        """Where our stream stands now on ``layer`` (its latest packet, our offsets;
        during a replay, the last packet it sent)."""
        replay = self._replay
        if replay is not None:
            seq = (replay.next - 1) & 0xFFFF
            packet = layer.history(seq)
            if packet is None:
                return _Sent(seq, replay.timestamp(layer.gop_ts), -1, -1, time.monotonic())
            pid = tl0 = -1
            vp8 = vp8_picture_ids(packet, 12)
            if vp8 is not None:
                pos, bits, tl0_pos = vp8
                if bits == 15:
                    pid = ((packet[12 + pos] & 0x7F) << 8) | packet[13 + pos]
                elif bits == 7:
                    pid = packet[12 + pos] & 0x7F
                if tl0_pos:
                    tl0 = packet[12 + tl0_pos]
            ts = replay.timestamp(int.from_bytes(packet[4:8], "big"))
            return _Sent(seq, ts, pid, tl0, time.monotonic())
        seq = ((layer.max_seq or 0) + self._seq_off) & 0xFFFF
        ts = (layer.last_ts + self._ts_off) & 0xFFFFFFFF
        pid = tl0 = -1
        if layer.last_picture_id >= 0:
            pid = (layer.last_picture_id + self._pid_off) & 0x7FFF
        if layer.last_tl0 >= 0:
            tl0 = (layer.last_tl0 + self._tl0_off) & 0xFF
        return _Sent(seq, ts, pid, tl0, layer.last_ts_time or time.monotonic())

    def switch_to(self, index: int) -> None:
        """Receive layer ``index`` from its next keyframe on; -1 pauses the video now."""
        layers = self.up.layers
        if index < 0:
            if self.paused:
                return
            if self.layer is not None:
                self._left = self._position(self.layer)
            for layer in layers:
                layer.remove(self)
            self.layer = self.wanted = None
            self.paused = True
            self.switches += 1
            metrics.LAYER_SWITCHES.inc()
            metrics.PAUSED_VIEWERS.inc()
            self._announce()
            return
        target = layers[min(index, len(layers) - 1)]
        if target is self.wanted:
            return
        for layer in layers:
            if layer is not target and layer is not self.layer:
                layer.remove(self)
        self.wanted = target
        if target is self.layer:
            target.remove_pending(self)
            return
        target.add_pending(self)

    def adapt(self, budget: int | None, now: float, *, congested: bool = False) -> None:
        """Follow the subscriber's estimate (called by its session about once a second
        and when the estimate falls): maybe switch layer, pause, resume, or probe."""
        up = self.up
        if not up.simulcast or self.target is None or up.closed:
            return
        current = self.wanted.index if self.wanted is not None else -1
        rates = [layer.bitrate for layer in up.layers]
        decision = self.policy.decide(
            current, rates, budget, self.fraction_lost, now, max_layer=self.max_layer,
            congested=congested,
        )
        layer, probe = decision.layer, decision.probe_bps
        if layer < 0 and self.layer is None and self._left is None:
            # no video sent yet: an estimate so far is of the audio alone, and a paused
            # track with no stream of its own has nothing to pad after (it would stay
            # paused for good); start on the lowest layer that flows, then follow the link
            flowing = [i for i, rate in enumerate(rates) if rate > 0]
            layer, probe = (flowing[0] if flowing else current), 0
        if layer != current:
            self.switch_to(layer)
        self.set_probe(probe)

    def set_probe(self, bps: int) -> None:
        """Pad at ``bps`` on top of the media (at frame ends) to let the estimate grow."""
        toggled = bool(bps) != bool(self._probe_bps)
        if bps and not self._probe_bps:
            self._pad_time = time.monotonic()
            self._pad_credit = 0.0
        self._probe_bps = bps
        padders = self.up.layers[0].padders
        if bps and self.paused:
            if self not in padders:
                padders.append(self)
        elif self in padders:
            padders.remove(self)
        layer = self.layer
        if bps and layer is not None and not self.rewrites and self in layer.plain:
            # padding takes sequence numbers: from now on ours differ from the layer's
            layer.plain.remove(self)
            self._start_rewriting()
            # what we sent so far had the layer's own numbers (offset 0)
            self._offset_since = ((layer.max_seq or 0) + 1 - HISTORY_SIZE) & 0xFFFF
            layer.rewriting.append(self)
            layer.rebuild()
        elif toggled and layer is not None and self in layer.rewriting:
            layer.rebuild()

    @property
    def probing(self) -> bool:
        return bool(self._probe_bps)

    def offsets(self) -> tuple[int, ...]:
        """What a rewriting subscriber shares its bytes with others by."""
        return (
            self.payload_type,
            self.abs_send_time_id,
            self._seq_off,
            self._ts_off,
            self._pid_off,
            self._tl0_off,
        )

    # -- the rewriting path ------------------------------------------------------------------

    def forward(self, base: bytearray, seq: int, ts: int, mbit: int, vp8: Vp8Ids | None) -> None:
        """One packet of our layer, with our own sequence number, timestamp and
        picture id, while we probe (others share theirs: Layer.on_rtp)."""
        target = self.target
        if target is None:
            return
        buf = bytearray(base)
        out = (seq + self._seq_off) & 0xFFFF
        buf[1] = mbit | self.payload_type
        buf[2] = out >> 8
        buf[3] = out & 0xFF
        if self._ts_off:
            buf[4:8] = _pack_ssrc((ts + self._ts_off) & 0xFFFFFFFF)
        if vp8 is not None and (self._pid_off or self._tl0_off):
            _shift_vp8_ids(buf, vp8, self._pid_off, self._tl0_off)
        self._out_map[out & _MASK] = (out << 17) | 0x10000 | seq
        if self.abs_send_time_id:
            packet = _with_extension(buf, abs_send_time(self.abs_send_time_id, time.monotonic()))
        else:
            packet = bytes(buf)
        protect, sendto, addr = target
        try:
            sendto(protect(packet), addr)
        except Exception as exc:  # noqa: BLE001
            logger.debug("forward failed: %s", exc)
            return
        if mbit and self._probe_bps:
            self._pad(out, (ts + self._ts_off) & 0xFFFFFFFF)

    def _pad(self, last_seq: int, ts: int) -> None:
        """Padding-only packets after a frame's last packet (``last_seq``)."""
        now = time.monotonic()
        self._pad_credit = min(
            self._pad_credit + self._probe_bps / 8 * (now - self._pad_time), self._probe_bps / 40
        )
        self._pad_time = now
        count = min(MAX_PADDING_BURST, int(self._pad_credit // (PADDING_SIZE + 20)))
        if count <= 0 or self.target is None:
            return
        protect, sendto, addr = self.target
        for i in range(1, count + 1):
            seq = (last_seq + i) & 0xFFFF
            head = bytearray(
                struct.pack("!BBHI", 0xA0, self.payload_type, seq, ts) + self.up.ssrc_bytes
            )
            ext = abs_send_time(self.abs_send_time_id, now) if self.abs_send_time_id else b""
            if ext:
                head[0] |= 0x10
            packet = bytes(head) + ext + bytes(PADDING_SIZE - 1) + bytes((PADDING_SIZE,))
            if self._out_map:
                self._out_map[seq & _MASK] = seq << 17
            try:
                sendto(protect(packet), addr)
            except Exception as exc:  # noqa: BLE001
                logger.debug("padding failed: %s", exc)
                break
            self._pad_credit -= len(packet)
        if self.layer is not None:
            self._seq_off = (self._seq_off + count) & 0xFFFF
            self._offset_since = (last_seq + count + 1) & 0xFFFF
        elif self._left is not None:
            self._left.seq = (self._left.seq + count) & 0xFFFF

    def pad_paused(self) -> None:
        """A frame end of the lowest layer while we are paused and probing."""
        left = self._left
        if left is not None and self._probe_bps:
            self._pad(left.seq, left.ts)

    # -- feedback from the subscriber ----------------------------------------------------------

    # called by aiortc's RtpRouter for RTCP whose media SSRC is ours; an
    # exception here would end the transport's receive loop
    async def _handle_rtcp_packet(self, packet: Any) -> None:
        try:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self.nacks += 1
                self.retransmit(packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (
                RTCP_PSFB_PLI,
                RTCP_PSFB_FIR,
            ):
                self.keyframe_requests += 1
                self.request_keyframe()
            elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                for report in packet.reports:
                    if report.ssrc == self.ssrc:
                        self.on_report(report.fraction_lost, report.lsr, report.dlsr)
        except Exception:
            logger.exception("RTCP feedback handling failed")

    def request_keyframe(self) -> None:
        layer = self.wanted or self.layer
        if layer is not None:
            layer.request_keyframe()

    def on_report(self, fraction_lost: int, lsr: int, dlsr: int) -> None:
        self.fraction_lost = fraction_lost / 256.0
        sent_at = self._sr_sent.get(lsr)
        if sent_at is not None:
            self.rtt = max(0.0, time.monotonic() - sent_at - dlsr / 65536)

    def use_rtx(self, payload_type: int | None, ssrc: int) -> None:
        """Answer NACKs with RTX packets of ``payload_type`` on ``ssrc`` (kept
        once chosen), or in the media stream when ``payload_type`` is None."""
        self.rtx_payload_type = payload_type
        if payload_type is not None and self.rtx_ssrc is None:
            self.rtx_ssrc = ssrc
            self._rtx_ssrc_bytes = _pack_ssrc(ssrc)
            self._rtx_seq = ssrc & 0xFFFF  # a start unrelated to the media stream's

    def sent_packet(self, seq: int) -> bytearray | None:
        """The packet this subscriber was sent as ``seq`` (its own sequence
        number), as it was sent: payload type, and for a rewriting subscriber
        its timestamp and VP8 ids, rebuilt from the current layer's history
        (no header extension). None when it is gone, was padding, or was sent
        from another layer."""
        layer = self.layer
        if layer is None:
            return None
        if not self.rewrites:
            packet = layer.history(seq)
            if packet is None:
                return None
            buf = bytearray(packet)
            buf[1] = (buf[1] & 0x80) | self.payload_type
            replayed = self._replayed
            if replayed is not None and (seq - replayed.first) & 0xFFFF < 0x8000:
                # sent by the replay: with the timestamp it had then
                buf[4:8] = _pack_ssrc(replayed.timestamp(int.from_bytes(packet[4:8], "big")))
            return buf
        entry = self._out_map[seq & _MASK]
        if entry >= 0 and entry >> 17 == seq:
            if not entry & 0x10000:
                return None  # padding
            in_seq = entry & 0xFFFF
        elif (seq - self._offset_since) & 0xFFFF < 0x8000:
            in_seq = (seq - self._seq_off) & 0xFFFF
        else:
            return None
        packet = layer.history(in_seq)
        if packet is None:
            return None
        return self._rewritten(packet, seq)

    def retransmit(self, lost: list[int]) -> None:
        target = self.target
        if target is None:
            return
        protect, sendto, addr = target
        rtx_pt = self.rtx_payload_type
        now = time.monotonic()
        gap = self.rtt if self.rtt is not None else RESEND_GAP_UNKNOWN_RTT
        resent = self._resent
        while resent:  # forget resends older than a second (in the order they were made)
            first = next(iter(resent))
            if now - resent[first] < 1.0 and len(resent) <= HISTORY_SIZE:
                break
            del resent[first]
        layer = self.layer
        rate = max(RESEND_MIN_BPS, layer.bitrate if layer is not None else 0.0) / 8
        self._resend_credit = min(self._resend_credit + rate * (now - self._resend_time),
                                  rate * RESEND_BURST_SECONDS)
        self._resend_time = now
        skipped = 0
        for seq in lost[:128]:
            last = resent.get(seq)
            if last is not None and now - last < gap:
                skipped += 1
                continue
            buf = self.sent_packet(seq)
            if buf is None:
                continue
            if len(buf) > self._resend_credit:
                skipped += 1
                continue
            self._resend_credit -= len(buf)
            resent.pop(seq, None)
            resent[seq] = now
            if self.abs_send_time_id:
                data = _with_extension(buf, abs_send_time(self.abs_send_time_id, now))
            else:
                data = bytes(buf)
            if rtx_pt is not None:
                data = rtx.wrap(data, rtx_pt, self._rtx_seq, self._rtx_ssrc_bytes)
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            try:
                sendto(protect(data), addr)
            except Exception as exc:  # noqa: BLE001
                logger.debug("retransmit failed: %s", exc)
                return
            self.retransmitted += 1
            metrics.RETRANSMITTED.inc()
            if rtx_pt is not None:
                metrics.RTX_SENT.inc()
        if skipped:
            self.resends_skipped += skipped
            metrics.RESENDS_SKIPPED.inc(skipped)

    def _rewritten(self, packet: bytes, out_seq: int) -> bytearray:
        """A packet of our current layer's history as we sent it (sequence ``out_seq``)."""
        buf = bytearray(packet)
        buf[1] = (buf[1] & 0x80) | self.payload_type
        buf[2] = out_seq >> 8
        buf[3] = out_seq & 0xFF
        ts = int.from_bytes(packet[4:8], "big")
        buf[4:8] = _pack_ssrc((ts + self._ts_off) & 0xFFFFFFFF)
        if self.up.codec_name == "vp8" and (self._pid_off or self._tl0_off):
            vp8 = vp8_picture_ids(packet, 12)
            if vp8 is not None:
                _shift_vp8_ids(buf, vp8, self._pid_off, self._tl0_off)
        return buf

    def sender_report(self) -> RtcpSrPacket:
        layer = self.layer or self.up.layers[0]
        ntp, rtp_ts = layer.clock_now()
        rtp_ts = (rtp_ts + self._ts_off) & 0xFFFFFFFF
        # counts are the up track's since this subscriber joined: an
        # estimate shared by its subscribers, which is what SR counts are for
        n = len(self.up.down) or 1
        packets = (self.up.forwarded - self._base[0]) // n
        octets = (self.up.forwarded_bytes - self._base[1]) // n
        lsr = (ntp >> 16) & 0xFFFFFFFF
        if len(self._sr_sent) > 8:
            self._sr_sent.clear()
        self._sr_sent[lsr] = time.monotonic()
        return RtcpSrPacket(
            ssrc=self.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_ts,
                packet_count=packets & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF,
            ),
        )

    def stats(self) -> dict[str, Any]:
        layer = self.layer
        return {
            "kind": self.up.kind,
            "codec": self.up.codec.mimeType,
            "layer": layer.index if layer is not None else None,
            "rid": layer.rid if layer is not None else None,
            "layers": len(self.up.layers),
            "max_layer": self.max_layer,
            "paused": self.paused,
            "switches": self.switches,
            "fraction_lost": round(self.fraction_lost, 3),
            "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None,
            "retransmitted": self.retransmitted,
            "resendsSkipped": self.resends_skipped,
            "replayed": self.replayed,
            "rtx": self.rtx_payload_type is not None,
            "keyframe_requests": self.keyframe_requests,
        }


def _shift_vp8_ids(buf: bytearray, vp8: Vp8Ids, pid_off: int, tl0_off: int) -> None:
    pos, bits, tl0 = vp8
    p = 12 + pos
    if bits == 15:
        pid = ((((buf[p] & 0x7F) << 8) | buf[p + 1]) + pid_off) & 0x7FFF
        buf[p] = 0x80 | (pid >> 8)
        buf[p + 1] = pid & 0xFF
    elif bits == 7:
        buf[p] = ((buf[p] & 0x7F) + pid_off) & 0x7F
    if tl0:
        buf[12 + tl0] = (buf[12 + tl0] + tl0_off) & 0xFF


def vp8_picture_ids(data: bytes, hlen: int) -> Vp8Ids | None:
    """Where the picture id and TL0PICIDX sit in a VP8 payload descriptor
    (RFC 7741), as offsets from the payload start; None without either."""
    n = len(data)
    if n <= hlen + 1 or not data[hlen] & 0x80:  # no X: no picture id, no TL0PICIDX
        return None
    x = data[hlen + 1]
    pos = 2
    pid_pos = bits = tl0_pos = 0
    if x & 0x80:  # I
        if n <= hlen + pos + 1:
            return None
        pid_pos = pos
        if data[hlen + pos] & 0x80:
            bits = 15
            pos += 2
        else:
            bits = 7
            pos += 1
    if x & 0x40:  # L
        if n <= hlen + pos:
            return None
        tl0_pos = pos
    if not bits and not tl0_pos:
        return None
    return (pid_pos, bits, tl0_pos)


def vp8_keyframe_start(data: bytes, hlen: int) -> bool:
    """The first packet of a VP8 keyframe (RFC 7741 payload descriptor)."""
    n = len(data)
    if n <= hlen:
        return False
    b = data[hlen]
    if not (b & 0x10) or (b & 0x07):  # S bit, partition 0
        return False
    pos = hlen + 1
    if b & 0x80:  # X: extension byte
        if n <= pos:
            return False
        x = data[pos]
        pos += 1
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if n <= pos:
                return False
            pos += 2 if data[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/KEYIDX
            pos += 1
    return n > pos and not (data[pos] & 0x01)  # P bit 0: keyframe


def h264_keyframe_start(data: bytes, hlen: int) -> bool:
    """A packet that starts an IDR access unit: SPS, IDR, a STAP-A holding
    one, or the first fragment of an IDR slice (RFC 6184)."""
    n = len(data)
    if n <= hlen:
        return False
    nal = data[hlen] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: 2-byte sizes, then NAL units
        pos = hlen + 1
        while pos + 2 < n:
            size = (data[pos] << 8) | data[pos + 1]
            if data[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal == 28 and n > hlen + 1:  # FU-A: start bit and IDR type
        fu = data[hlen + 1]
        return bool(fu & 0x80) and (fu & 0x1F) == 5
    return False


def receiver_report(rtcp_ssrc: int, reports: list[Any]) -> bytes:
    return bytes(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))


__all__ = ["DownTrack", "Layer", "PublisherLink", "SubscriberLink", "UpTrack", "receiver_report"]
