"""One WebRTC session: ICE, DTLS-SRTP and the tracks it publishes or receives.

A session is built from aiortc's ORTC objects (no RTCPeerConnection, no
RTCRtpReceiver, no RTCRtpSender): the engine writes the answer itself,
receives RTP as bytes through the seam and sends through SRTP and the socket.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import uuid
from collections.abc import Coroutine
from typing import Any, Literal, Protocol

from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcicetransport import (
    RTCIceCandidate,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RtcpPsfbPacket,
    RtcpSdesPacket,
    RtcpSourceInfo,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from config.settings import Settings

from . import aiortc_seam as seam
from . import metrics, rtx
from .bandwidth import DownlinkEstimate, LayerPolicy
from .candidates import CandidatePolicy
from .codecs import answer_codec, choose_publish_codec, match_rtx, match_subscriber_codec, rtx_codec
from .congestion import EXT_TRANSPORT_CC, TransportCc, split_feedback
from .errors import AtCapacity, IceRestartRefused, RestartTooSoon, SdpError, SessionNotFound
from .sdp import (
    EXT_ABS_SEND_TIME,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    PUBLISHER_EXTENSIONS,
    SUBSCRIBER_EXTENSIONS,
    AnswerSection,
    Offer,
    OfferedMedia,
    Transport,
    order_layers,
    parse_offer,
    write_description,
)
from .track import DownTrack, Layer, UpTrack, receiver_report

logger = logging.getLogger(__name__)

Role = Literal["publisher", "subscriber", "peer"]
RTCP_INTERVAL = 1.0
REMB_INTERVAL = 1.0  # seconds between two REMBs to a publisher when nothing changed
RESTART_SPACING = 1.0  # seconds between two ICE restarts of a session
RECEIVING = ("recvonly", "sendrecv")


class SessionHost(Protocol):
    """What a session needs of the engine that made it (the engine imports
    sessions; a session knows only this)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def certificate(self) -> RTCCertificate: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def candidates(self) -> CandidatePolicy: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def session_connected(self, session: Session) -> None: ...

    async def session_closing(self, session: Session, reason: str) -> None: ...

    def session_closed(self, session: Session, reason: str) -> None: ...


def random_ssrc() -> int:
    return random.randint(1, 0xFFFFFFFE)


class Session:
    """A publisher, subscriber or call peer session. Created by :class:`MediaEngine`.

    A peer both publishes its own tracks and receives the other party's on
    one sendrecv connection. Its answer announces a track on each section it
    may receive on and nobody sends on yet (:meth:`announce`); when the other
    party's track of that kind arrives with that codec it takes the announced
    SSRC and is sent there without a new offer. Other tracks that appear
    later are offered by the server (:meth:`create_offer` / :meth:`accept_answer`)."""

    def __init__(self, engine: SessionHost, role: Role, room: str, owner: str) -> None:
        self.id = uuid.uuid4().hex
        self.role: Role = role
        self.room = room
        self.owner = owner
        self.created_at = time.time()
        self.connected_at: float | None = None
        self.state: Literal["new", "connecting", "connected", "closed"] = "new"
        self.close_reason: str | None = None
        self.answer_sdp = ""
        self.uptracks: list[UpTrack] = []
        self.downtracks: list[DownTrack] = []
        self.rtcp_ssrc = random_ssrc()
        self.sender: seam.DatagramSender | None = None

        self._engine = engine
        self._cname = uuid.uuid4().hex[:16]
        self._by_ssrc: dict[int, Layer] = {}
        self._rtx_by_ssrc: dict[int, Layer] = {}  # the publisher's RTX SSRCs, by the layer they repair
        self._closing = False
        self._closed = asyncio.Event()
        self._connect_task: asyncio.Task[None] | None = None
        self._rtcp_task: asyncio.Task[None] | None = None
        self._offer: Offer | None = None
        self._sdp_version = 1
        self._sdp_session_id = secrets.randbits(62)
        self.consent = None
        self.lines: list[MediaLine] = []
        self._offer_pending = False
        self._announced_stream = uuid.uuid4().hex  # the msid stream of announced tracks
        # pulled from a remote origin (we offered, the origin answered): an
        # edge's local copy of a room, not a publisher of its own
        self.pulled = False
        # bandwidth: what the subscriber's browser says of its downlink (REMB,
        # reports), and our own estimate of the publisher's uplink (REMB we send)
        self.downlink = DownlinkEstimate()
        self.uplink_bitrate: int | None = None
        self._uplink: RemoteBitrateEstimator | None = None
        self._abs_send_time_id = 0
        self._rid_id = 0
        self._repaired_rid_id = 0
        self._mid_id = 0
        self._remb_sent = (0, 0.0)  # (bitrate, monotonic)
        # a subscriber that gives transport-cc feedback: our send-side estimate
        # of its downlink (sfu/congestion.py), instead of its REMB
        self.transport_cc: TransportCc | None = None
        self._tcc_protect: tuple[Any, Any] | None = None  # (SRTP protect, stamping wrapper)
        self._adapted_at = 0.0
        self._restart: seam.IceRestart | None = None  # new ICE path being checked
        self._restart_task: asyncio.Task[None] | None = None
        self._restart_lock = asyncio.Lock()
        self._restarted_at = -RESTART_SPACING

        settings = engine.settings
        self._gatherer = RTCIceGatherer(iceServers=[])
        self.ice = RTCIceTransport(self._gatherer)
        self.dtls = RTCDtlsTransport(self.ice, [engine.certificate])
        seam.restrict_gathering(self.ice, tuple(settings.ice_addresses), settings.udp_ports)
        self.consent = seam.count_inbound_as_consent(self.ice)
        seam.tap_rtp(self.dtls, self._on_rtp)

    # -- public ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def add_remote_candidate(self, candidate: Any) -> None:
        """A trickled remote candidate (aiortc RTCIceCandidate) or None for the end."""
        if self._closing:
            return
        if candidate is not None and (
            candidate.component != 1
            or candidate.protocol.lower() != "udp"
            or candidate.ip.endswith(".local")
            or not self._engine.candidates.admits(self, candidate, self._gatherer.getLocalCandidates())
        ):
            return
        if self._restart is not None:  # a candidate of the restart's generation
            if candidate is None and not self._restart.has_remote_candidates:
                return  # only mDNS ones so far: the peer's checks will reveal its address
            await self._restart.add_remote_candidate(candidate)
            return
        await self.ice.addRemoteCandidate(candidate)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "id": self.id,
            "role": self.role,
            "room": self.room,
            "state": self.state,
            "downlink_bps": self.downlink.current(now),
            "downlink_source": "transport-cc" if self.transport_cc is not None else "remb",
            **(
                {
                    "queue_delay_ms": round(self.transport_cc.queue_delay * 1000, 1),
                    "delivery_bps": self.transport_cc.delivery_bps,
                    "transport_loss": round(self.transport_cc.loss, 3),
                    "congested": self.transport_cc.congested,
                }
                if self.transport_cc is not None
                else {}
            ),
            "uplink_bps": self.uplink_bitrate,
            "tracks": [
                {
                    "kind": u.kind,
                    "codec": u.codec.mimeType,
                    "packets": u.packets,
                    "layers": [
                        {"rid": layer.rid, "ssrc": layer.ssrc, "bitrate": int(layer.bitrate)}
                        for layer in u.layers
                    ],
                }
                for u in self.uptracks
            ]
            + [d.stats() for d in self.downtracks],
        }

    def set_max_layer(self, max_layer: int | None) -> None:
        """Cap the simulcast layer each of our video tracks receives (0 = lowest;
        None = no cap). Takes effect at the target layer's next keyframe."""
        now = time.monotonic()
        for down in self.downtracks:
            down.max_layer = max_layer
        self._adapt(now)

    # -- set-up -------------------------------------------------------------------------

    async def _prepare(self, offer: Offer, *, controlling: bool | None = None) -> None:
        self._offer = offer
        seam.set_ice_controlling(self.ice, offer.ice.iceLite if controlling is None else controlling)
        # offer actpass -> we are the DTLS client, as aiortc and browsers do
        seam.set_dtls_role(self.dtls, "server" if offer.dtls.role == "client" else "client")
        await self._gatherer.gather()
        for candidate in offer.candidates:
            await self.add_remote_candidate(candidate)
        if offer.candidates_complete:
            await self.add_remote_candidate(None)

    def _transport_description(self) -> Transport:
        return Transport(
            ice=self._gatherer.getLocalParameters(),
            fingerprints=self.dtls.getLocalParameters().fingerprints,
            setup="passive" if seam.dtls_role(self.dtls) == "server" else "active",
            candidates=self._gatherer.getLocalCandidates(),
        )

    def _write(
        self,
        sections: list[AnswerSection],
        setup: str | None = None,
        transport: Transport | None = None,
    ) -> str:
        transport = transport or self._transport_description()
        if setup is not None:
            transport.setup = setup
        text = write_description(
            sections,
            transport,
            session_id=self._sdp_session_id,
            version=self._sdp_version,
            cname=self._cname,
        )
        self._sdp_version += 1
        return text

    async def start(self, offer: Offer, lines: list[MediaLine]) -> None:
        """Gather, then answer ``offer`` with ``lines`` (one per media section:
        what we receive on it, what we send on it). The lines are the
        session's while it gathers: a call's other party, joining meanwhile,
        receives their up tracks and claims their announced tracks."""
        self.lines = lines
        await self._prepare(offer)
        self._take(lines)
        self.answer_sdp = self._write([line.section() for line in lines])
        self._begin()

    def _take(self, lines: list[MediaLine]) -> None:
        """Make ``lines`` this session's: the tracks it receives and sends."""
        self.lines = lines
        remb = False
        for line in lines:
            if line.up is not None:
                self.uptracks.append(line.up)
                for layer in line.up.layers:
                    if layer.ssrc is not None:
                        self._by_ssrc[layer.ssrc] = layer
                ext = line.media.extensions
                self._abs_send_time_id = self._abs_send_time_id or ext.get(EXT_ABS_SEND_TIME, 0)
                self._rid_id = self._rid_id or ext.get(EXT_RID, 0)
                self._repaired_rid_id = self._repaired_rid_id or ext.get(EXT_REPAIRED_RID, 0)
                self._mid_id = self._mid_id or ext.get(EXT_MID, 0)
                remb = remb or any(fb.type == "goog-remb" for fb in line.up.codec.rtcpFeedback)
            if line.down is not None:
                self.downtracks.append(line.down)
                self._use_rtx(line.down, line.down_codec, line.media.codecs)
        if remb and self._abs_send_time_id:
            self._uplink = RemoteBitrateEstimator()
        if self.role == "subscriber":
            self._use_transport_cc(lines)

    def _use_transport_cc(self, lines: list[MediaLine]) -> None:
        """Estimate a subscriber's downlink on our side when it offered
        transport-cc (extension and feedback) for a video section we send on:
        every packet we send it is stamped, abs-send-time is not written."""
        ext_id = 0
        for line in lines:
            if line.down is None or line.down_codec is None or line.media.kind != "video":
                continue
            if any(fb.type == "transport-cc" for fb in line.down_codec.rtcpFeedback):
                ext_id = ext_id or line.media.extensions.get(EXT_TRANSPORT_CC, 0)
        downs = [line for line in lines if line.down is not None]
        if not ext_id or any(line.media.extensions.get(EXT_TRANSPORT_CC) != ext_id for line in downs):
            return  # every packet we send must carry it, or the feedback reports gaps as losses
        self.transport_cc = TransportCc(ext_id, self._on_send_side_estimate)
        for line in downs:
            assert line.down is not None
            line.transport_cc = True
            line.down.abs_send_time_id = 0
            line.down.policy = LayerPolicy(send_side=True)
        seam.tap_rtcp(self.dtls, self._take_transport_feedback)

    def _take_transport_feedback(self, data: bytes) -> bytes:
        feedback, rest = split_feedback(data)
        if self.transport_cc is not None:
            for fci in feedback:
                self.transport_cc.on_feedback(fci)
        return rest

    def _on_send_side_estimate(self, bitrate: int, congested: bool) -> None:
        now = time.monotonic()
        previous = self.downlink.current(now)
        self.downlink.update(bitrate, now)
        if congested or previous is None or bitrate < previous or now - self._adapted_at >= 0.25:
            self._adapt(now, congested=congested)

    def _begin(self) -> None:
        """Route our publishers' RTCP to us and start connecting."""
        if self._by_ssrc:
            seam.register_rtcp_source(self.dtls, list(self._by_ssrc), self)
        self._start()

    # -- pulling (an edge: we offer to a remote origin and receive its tracks) ---------------

    async def pull_offer(self, sections: list[AnswerSection]) -> str:
        """Gather, then write our own offer (``actpass``) with ``sections``.

        We are the ICE controlling side from the start: the origin starts its
        checks as soon as it answers, and may reach us before its answer does.
        Were we still controlled then, the role conflict would flip the origin
        to controlling, then us back to controlled, and nobody would nominate."""
        seam.set_ice_controlling(self.ice, True)
        await self._gatherer.gather()
        return self._write(sections, setup="actpass")

    async def start_pulled(self, answer: Offer, lines: list[MediaLine]) -> None:
        """The origin's answer to :meth:`pull_offer`: we are the ICE controlling
        side (the origin never is), DTLS as the answer's ``setup`` says."""
        self.pulled = True
        await self._prepare(answer, controlling=True)
        self._take(lines)
        self._begin()

    def new_uptrack(
        self, media: OfferedMedia, codec: RTCRtpCodecParameters, *, out_ssrc: int | None = None
    ) -> UpTrack:
        fbs = {(fb.type, fb.parameter) for fb in codec.rtcpFeedback}
        rtx_ssrcs = {r for _, r in media.fid}
        ssrcs = [s for s in media.ssrcs if s not in rtx_ssrcs]
        rids: list[str] = []
        known = True
        if media.kind == "video" and media.rids:
            # layers by rid; their SSRCs from the SIM group (in rid order) or
            # later from the rtp-stream-id extension of their first packets
            rids, known = order_layers(media.rids)
            by_rid = dict(zip(media.rids, media.sim_ssrcs, strict=False))
            ssrcs = [by_rid[r] for r in rids] if len(by_rid) == len(rids) else []
        elif media.kind == "video" and len(media.sim_ssrcs) > 1:
            rids = [str(i) for i in range(len(media.sim_ssrcs))]  # SIM without rids: low to high
            ssrcs = list(media.sim_ssrcs)
        else:
            ssrcs = ssrcs[:1]
        up = UpTrack(
            self,
            kind=media.kind,
            mid=media.mid,
            codec=answer_codec(codec, codec),
            ssrcs=ssrcs,
            out_ssrc=out_ssrc if out_ssrc is not None else random_ssrc(),
            fir_only=("nack", "pli") not in fbs and ("ccm", "fir") in fbs,
            rids=rids,
            rid_order_known=known,
            gop_max_age=self._engine.settings.gop_cache_max_age,
        )
        repair = match_rtx(codec, media.codecs)
        if repair is not None:
            # one RTX payload type for the track; an RTX SSRC per layer (FID pairs)
            up.rtx_payload_type = repair.payloadType
            by_media_ssrc = dict(media.fid)
            for layer in up.layers:
                if layer.ssrc is not None and layer.ssrc in by_media_ssrc:
                    self.bind_rtx_ssrc(by_media_ssrc[layer.ssrc], layer)
        return up

    def bind_rtx_ssrc(self, rtx_ssrc: int, layer: Layer) -> None:
        """Packets the publisher sends on ``rtx_ssrc`` are RTX repairs for
        ``layer`` (from ``a=ssrc-group:FID``, the RTX payload type of a plain
        track, or a repaired-rtp-stream-id header extension naming the layer)."""
        self._rtx_by_ssrc[rtx_ssrc] = layer

    def _use_rtx(
        self,
        down: DownTrack,
        peer_codec: RTCRtpCodecParameters | None,
        offered: list[RTCRtpCodecParameters],
    ) -> None:
        """RTX toward the subscriber when it offered RTX for ``peer_codec``."""
        repair = match_rtx(peer_codec, offered) if peer_codec is not None else None
        down.use_rtx(repair.payloadType if repair is not None else None, random_ssrc())

    # -- announced tracks (calls: the other party's tracks in the first answer) -------------

    def announce(self, line: MediaLine) -> None:
        """Announce on ``line`` (a section the peer receives on, with nothing
        to send on it yet) a track of its kind in the peer's own preferred
        codec: an SSRC, an msid and RTX when offered. Nothing is sent until an
        up track claims it (:meth:`claimable`) and is bound to it
        (:meth:`offer_tracks`)."""
        m = line.media
        if line.down is not None or line.rejected or m.direction not in RECEIVING or not m.rtcp_mux:
            return
        peer = choose_publish_codec(m.codecs)
        if peer is None:
            return
        repair = match_rtx(peer, m.codecs)
        ssrc = random_ssrc()
        line.announced = Announced(
            peer_codec=peer,
            codec=answer_codec(peer, peer),
            ssrc=ssrc,
            rtx_payload_type=repair.payloadType if repair is not None else None,
            rtx_ssrc=random_ssrc(),
            msid=f"{self._announced_stream} {m.kind}-{ssrc:08x}",
        )

    def claimable(self, kind: str, codec: RTCRtpCodecParameters) -> Announced | None:
        """An announced ``kind`` track that an up track of ``codec`` can be
        sent as (same payload type at the peer), not claimed by a live up
        track nor used before. The claimer sets ``up`` and uses its SSRC."""
        if self._closing:
            return None
        for line in self.lines:
            announced = line.announced
            if announced is None or announced.bound or line.down is not None or line.media.kind != kind:
                continue
            if announced.up is not None and not announced.up.closed:
                continue
            peer = match_subscriber_codec(codec, line.media.codecs)
            if peer is not None and peer.payloadType == announced.peer_codec.payloadType:
                return announced
        return None

    def _bind_announced(self, line: MediaLine, up: UpTrack) -> None:
        """Send ``up`` on the line that announced it (its out SSRC is the
        announced one): the peer already knows the track, no offer needed."""
        announced = line.announced
        assert announced is not None and up.out_ssrc == announced.ssrc
        announced.bound = True
        line.down = DownTrack(
            self,
            up,
            mid=line.media.mid,
            payload_type=announced.peer_codec.payloadType,
            abs_send_time_id=line.media.extensions.get(EXT_ABS_SEND_TIME, 0),
        )
        line.down_codec = announced.peer_codec
        line.down.use_rtx(announced.rtx_payload_type, announced.rtx_ssrc)
        self.downtracks.append(line.down)
        if self.state == "connected":
            self._start_down(line.down)

    def layer_changed(self, down: DownTrack) -> None:
        """``down`` switched layer, paused or resumed (its app may say so to its user)."""
        self._engine.layer_changed(self, down)

    # -- renegotiation (calls: the server offers the other party's tracks) ------------------

    def offer_tracks(self, uptracks: list[UpTrack]) -> bool:
        """Plan to send ``uptracks`` too: at once on the lines that announced
        them, else on a line the peer is offered; True when an offer
        (``create_offer``) is needed to tell the peer."""
        added = False
        for up in uptracks:
            if up.closed or any(d.up is up for d in self.downtracks):
                continue
            announced = next(
                (
                    line
                    for line in self.lines
                    if line.announced is not None
                    and line.announced.up is up
                    and not line.announced.bound
                    and line.down is None
                ),
                None,
            )
            if announced is not None:
                self._bind_announced(announced, up)
                continue
            line, peer_codec = self._line_for(up)
            if line is None or peer_codec is None:
                continue
            line.down = DownTrack(
                self,
                up,
                mid=line.media.mid,
                payload_type=peer_codec.payloadType,
                abs_send_time_id=line.media.extensions.get(EXT_ABS_SEND_TIME, 0),
            )
            line.down_codec = peer_codec
            line.pending = True
            line.announced = None  # the offer tells the peer the track's own SSRC and msid
            self._use_rtx(line.down, peer_codec, line.media.codecs)
            self.downtracks.append(line.down)
            added = True
        return added

    def _line_for(self, up: UpTrack) -> tuple[MediaLine | None, Any]:
        for line in self.lines:
            m = line.media
            if (
                m.kind == up.kind
                and line.down is None
                and m.direction in RECEIVING
                and not line.rejected
                and (line.announced is None or line.announced.up is None or line.announced.up.closed)
            ):
                peer = match_subscriber_codec(up.codec, m.codecs)
                if peer is not None:
                    return line, peer
        # a new media section, with the codecs the peer offered for this kind
        codecs = [c for line in self.lines if line.media.kind == up.kind for c in line.media.codecs]
        peer = match_subscriber_codec(up.codec, codecs)
        if peer is None:
            return None, None
        repair = match_rtx(peer, codecs)
        mids = {line.media.mid for line in self.lines}
        mid = next(str(i) for i in range(len(mids) + 1) if str(i) not in mids)
        media = OfferedMedia(
            index=len(self.lines),
            kind=up.kind,
            mid=mid,
            protocol="UDP/TLS/RTP/SAVPF",
            fmt=[str(c.payloadType) for c in (peer, repair) if c is not None],
            direction="recvonly",
            rtcp_mux=True,
            codecs=[c for c in (peer, repair) if c is not None],
            ssrcs=[],
            fid=[],
            msid=None,
        )
        line = MediaLine(media)
        self.lines.append(line)
        return line, peer

    def drop_tracks_of(self, publisher: Session) -> None:
        """Stop sending what ``publisher`` sent (it left); the media section stays."""
        for line in self.lines:
            if line.down is not None and line.down.up.publisher is publisher:
                line.down.stop()
                seam.unregister_rtcp(self.dtls, line.down)
                self.downtracks.remove(line.down)
                line.down = None
                line.down_codec = None
                line.pending = False
                line.announced = None  # its SSRC carried that track: a new one is offered anew

    def create_offer(self) -> str:
        """An offer for the current media sections (ICE and DTLS unchanged)."""
        if self._closing:
            raise SessionNotFound(self.id)
        text = self._write([line.section() for line in self.lines], setup="actpass")
        self._offer_pending = True
        return text

    async def accept_answer(self, answer_sdp: str) -> None:
        """The peer's answer to :meth:`create_offer`: start sending what it accepted."""
        if self._closing:
            raise SessionNotFound(self.id)
        if not self._offer_pending:
            raise SdpError("no offer is pending")
        answer = parse_offer(answer_sdp)
        if [m.mid for m in answer.media] != [line.media.mid for line in self.lines]:
            raise SdpError("media sections in the answer do not match the offer")
        self._offer_pending = False
        for line, m in zip(self.lines, answer.media, strict=True):
            if not line.pending or line.down is None:
                continue
            line.pending = False
            down = line.down
            peer = match_subscriber_codec(down.up.codec, m.codecs)
            if m.direction not in ("recvonly", "sendrecv") or peer is None:
                self.drop_down(line)
                continue
            down.payload_type = peer.payloadType
            down.abs_send_time_id = min(
                down.abs_send_time_id, m.extensions.get(EXT_ABS_SEND_TIME, 0)
            )
            line.down_codec = peer
            self._use_rtx(down, peer, m.codecs)
            if self.state == "connected":
                self._start_down(down)

    def drop_down(self, line: MediaLine) -> None:
        if line.down is not None:
            line.down.stop()
            if line.down in self.downtracks:
                self.downtracks.remove(line.down)
        line.down = None
        line.down_codec = None
        line.pending = False
        line.announced = None

    def _start_down(self, down: DownTrack) -> None:
        seam.register_rtcp_sink(self.dtls, down.ssrc, down)
        target = self._target()
        if target is not None:
            down.start(target)

    def _start(self) -> None:
        self.state = "connecting"
        self.ice.on("statechange", self._on_ice_state)
        self.dtls.on("statechange", self._on_dtls_state)
        self._connect_task = asyncio.create_task(self._connect(), name=f"sfu-connect-{self.id}")

    async def _connect(self) -> None:
        assert self._offer is not None
        try:
            async with asyncio.timeout(self._engine.connect_timeout):
                await self.ice.start(self._offer.ice)
                if self.ice.state != "completed":
                    self._engine.spawn(self.close("ice_failed"))
                    return
                await self.dtls.start(self._offer.dtls)
        except TimeoutError:
            self._engine.spawn(self.close("connect_timeout"))
            return
        except Exception as exc:  # noqa: BLE001 - aiortc can raise on odd peers
            logger.info("session %s: connect failed: %s", self.id, exc)
            self._engine.spawn(self.close("dtls_failed"))
            return
        if self._closing:
            return
        if self.dtls.state != "connected":
            self._engine.spawn(self.close("dtls_failed"))
            return
        self._on_connected()

    def _on_connected(self) -> None:
        self.sender = seam.DatagramSender(self.dtls)
        self.state = "connected"
        self.connected_at = time.time()
        seam.register_rtcp_sink(self.dtls, 0, _FirSink(self))
        pending = {line.down for line in self.lines if line.pending}
        for down in self.downtracks:
            if down not in pending:
                self._start_down(down)
        for up in self.uptracks:
            up.wants_keyframe_on_connect()
        self._rtcp_task = asyncio.create_task(self._run_rtcp(), name=f"sfu-rtcp-{self.id}")
        self._engine.session_connected(self)

    def _target(self) -> tuple[Any, Any, Any] | None:
        s = self.sender
        if s is None or s.sendto is None:
            return None
        if self.transport_cc is None:
            return (s.protect, s.sendto, s.addr)
        if self._tcc_protect is None or self._tcc_protect[0] is not s.protect:
            self._tcc_protect = (s.protect, self.transport_cc.wrap(s.protect))
        return (self._tcc_protect[1], s.sendto, s.addr)

    # -- receiving (publisher) ----------------------------------------------------------------

    def _on_rtp(self, data: bytes) -> None:
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        layer = self._by_ssrc.get(ssrc)
        if layer is None:
            repaired = self._rtx_by_ssrc.get(ssrc)
            if repaired is None:
                repaired = self._learn_rtx_ssrc(ssrc, data)
            if repaired is not None:
                if self._uplink is not None and data[0] & 0x10:
                    self._estimate_uplink(ssrc, data)  # RTX padding probes count too
                self._on_rtx(repaired, data)
                return
            layer = self._learn_ssrc(ssrc, data)
            if layer is None:
                return
        if self._uplink is not None and data[0] & 0x10:
            self._estimate_uplink(ssrc, data)
        layer.on_rtp(data)

    def _on_rtx(self, layer: Layer, data: bytes) -> None:
        """An RTX packet repairing ``layer``: the original packet goes in as a late one."""
        up = layer.track
        if (data[1] & 0x7F) != up.rtx_payload_type or layer.ssrc is None:
            return
        original = rtx.unwrap(data, up.codec.payloadType, layer.ssrc)
        if original is not None and layer.on_repair(original):
            metrics.RTX_REPAIRED.inc()

    def _learn_rtx_ssrc(self, ssrc: int, data: bytes) -> Layer | None:
        """An unknown SSRC sending an RTX payload type: the layer its
        repaired-rtp-stream-id (and mid) extension names, or else the one
        layer of the one plain track with that RTX payload type."""
        pt = data[1] & 0x7F
        candidates = [u for u in self.uptracks if u.rtx_payload_type == pt]
        if not candidates:
            return None
        layer = None
        if self._repaired_rid_id and data[0] & 0x10:
            rid = header_extension(data, self._repaired_rid_id)
            if rid is not None:
                mid = header_extension(data, self._mid_id) if self._mid_id else None
                for up in candidates:
                    if mid is None or mid.decode("ascii", "replace") == up.mid:
                        layer = up.layer_by_rid(rid.decode("ascii", "replace"))
                        if layer is not None:
                            break
        if layer is None and len(candidates) == 1 and not candidates[0].simulcast:
            layer = candidates[0].layers[0]
        if layer is None or layer in self._rtx_by_ssrc.values():
            return None
        self.bind_rtx_ssrc(ssrc, layer)
        return layer

    def _learn_ssrc(self, ssrc: int, data: bytes) -> Layer | None:
        """A new SSRC: a simulcast layer by its rtp-stream-id (and mid), or the
        one track of its payload type that has no SSRC yet."""
        pt = data[1] & 0x7F
        candidates = [u for u in self.uptracks if u.codec.payloadType == pt]
        layer = None
        if self._rid_id and data[0] & 0x10:
            rid = header_extension(data, self._rid_id)
            if rid is not None:
                mid = header_extension(data, self._mid_id) if self._mid_id else None
                for up in candidates:
                    if up.simulcast and (mid is None or mid.decode("ascii", "replace") == up.mid):
                        layer = up.layer_by_rid(rid.decode("ascii", "replace"))
                        if layer is not None:
                            break
        if layer is None and len(candidates) == 1 and not candidates[0].simulcast:
            layer = candidates[0].layers[0]
        if layer is None or layer.ssrc is not None:
            return None
        layer.ssrc = ssrc
        self._by_ssrc[ssrc] = layer
        seam.register_rtcp_source(self.dtls, [ssrc], self)
        return layer

    def _estimate_uplink(self, ssrc: int, data: bytes) -> None:
        """Feed the receive-side estimator (abs-send-time); send REMB when it says so."""
        value = header_extension(data, self._abs_send_time_id)
        if value is None or len(value) != 3 or self._uplink is None:
            return
        remb = self._uplink.add(
            arrival_time_ms=int(time.monotonic() * 1000),
            abs_send_time=int.from_bytes(value, "big"),
            payload_size=len(data),
            ssrc=ssrc,
        )
        if remb is not None:
            self.uplink_bitrate = remb[0]
            self._send_remb()

    def _send_remb(self) -> None:
        """REMB to the publisher: our estimate of its uplink, and in a call no
        more than what the receiving party's downlink takes."""
        sender = self.sender
        if sender is None or self.uplink_bitrate is None or not self._by_ssrc:
            return
        bitrate = self.uplink_bitrate
        now = time.monotonic()
        if self.role == "peer":
            for up in self.uptracks:
                for down in up.down:
                    other = down.session.downlink.current(now) if down.session else None
                    if other is not None:
                        bitrate = min(bitrate, other)
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=self.rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(bitrate, sorted(self._by_ssrc)),
        )
        try:
            sender.send_rtcp(bytes(packet))
        except Exception as exc:  # noqa: BLE001
            logger.debug("session %s: REMB failed: %s", self.id, exc)
            return
        self._remb_sent = (bitrate, now)

    def on_remb(self, bitrate: int) -> None:
        """The subscriber's REMB (its browser's downlink estimate)."""
        now = time.monotonic()
        previous = self.downlink.current(now)
        self.downlink.update(bitrate, now)
        if previous is None or bitrate < previous:
            self._adapt(now)

    def _adapt(self, now: float, *, congested: bool = False) -> None:
        """Each simulcast video track's layer from the downlink estimate, less
        audio (``congested``: the send-side estimate just saw a queue build)."""
        self._adapted_at = now
        estimate = self.downlink.current(now)
        videos = [d for d in self.downtracks if d.up.simulcast]
        if not videos:
            return
        budget = None
        if estimate is not None:
            audio = sum(d.up.layers[0].bitrate for d in self.downtracks if d.up.kind == "audio")
            budget = max(0, int((estimate - audio) / len(videos)))
        for down in videos:
            down.adapt(budget, now, congested=congested)

    # called by aiortc's RtpRouter for RTCP about the publisher's SSRCs
    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            layer = self._by_ssrc.get(packet.ssrc)
            if layer is not None:
                layer.on_sender_report(
                    packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp
                )
        # RtcpByePacket: nothing to do, the transport closing ends the session

    def _handle_disconnect(self) -> None:
        pass

    # -- RTCP loop ------------------------------------------------------------------------------

    async def _run_rtcp(self) -> None:
        try:
            while True:
                await asyncio.sleep(RTCP_INTERVAL * (0.5 + random.random()))
                self._rtcp_tick()
        except asyncio.CancelledError:
            pass

    def _rtcp_tick(self) -> None:
        sender = self.sender
        if sender is None:
            return
        if sender.stale():
            sender.refresh()
            target = self._target()
            for down in self.downtracks:
                down.retarget(target)
        now = time.monotonic()
        self._adapt(now)
        if self._uplink is not None and now - self._remb_sent[1] >= REMB_INTERVAL:
            self._send_remb()
        try:
            if self.uptracks:
                reports = []
                for up in self.uptracks:
                    reports.extend(up.periodic())
                if reports:
                    sender.send_rtcp(receiver_report(self.rtcp_ssrc, reports))
            if self.downtracks:
                payload = b""
                chunks = []
                for down in self.downtracks:
                    if down.target is None:
                        continue
                    payload += bytes(down.sender_report())
                    chunks.append(RtcpSourceInfo(ssrc=down.ssrc, items=[(1, self._cname.encode())]))
                    if down.rtx_payload_type is not None and down.rtx_ssrc is not None:
                        chunks.append(
                            RtcpSourceInfo(ssrc=down.rtx_ssrc, items=[(1, self._cname.encode())])
                        )
                if payload:
                    payload += bytes(RtcpSdesPacket(chunks=chunks))
                    sender.send_rtcp(payload)
        except Exception as exc:  # noqa: BLE001
            logger.debug("session %s: RTCP failed: %s", self.id, exc)

    # -- state and closing ------------------------------------------------------------------------

    def _on_ice_state(self) -> None:
        if self.ice.state == "failed":
            self._engine.spawn(self.close("ice_failed"))

    def _on_dtls_state(self) -> None:
        state = self.dtls.state
        if state == "failed":
            self._engine.spawn(self.close("dtls_failed"))
        elif state == "closed":
            self._engine.spawn(self.close("disconnected"))

    async def close(self, reason: str = "closed") -> None:
        """End the session and release everything it holds. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        self.ice.remove_all_listeners()
        self.dtls.remove_all_listeners()

        for down in self.downtracks:
            down.stop()
        for up in self.uptracks:
            up.close()
        # the engine ends the subscribers of a publisher that leaves
        await self._engine.session_closing(self, reason)

        current = asyncio.current_task()
        for task in (self._connect_task, self._rtcp_task):
            if task is not None and task is not current and not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001
                    pass
        await self._drop_restart()
        seam.unregister_rtcp(self.dtls, self)
        for down in self.downtracks:
            seam.unregister_rtcp(self.dtls, down)
        try:
            await seam.stop_dtls(self.dtls)
        except Exception as exc:  # noqa: BLE001
            logger.debug("session %s: DTLS stop: %s", self.id, exc)
        try:
            await self.ice.stop()
        except Exception as exc:  # noqa: BLE001
            logger.debug("session %s: ICE stop: %s", self.id, exc)
        self.sender = None
        self.state = "closed"
        self._closed.set()
        self._engine.session_closed(self, reason)

    # -- ICE restart ----------------------------------------------------------------------------

    async def restart_ice(
        self,
        remote: RTCIceParameters,
        candidates: list[RTCIceCandidate],
        complete: bool = False,
    ) -> tuple[RTCIceParameters, list[RTCIceCandidate]]:
        """The peer restarts ICE with ``remote`` credentials (and candidates):
        gather with new credentials of ours and return them with our
        candidates. Checks run in the background; once a new pair is nominated
        it replaces the old path under the same DTLS association (no new
        handshake), and media follows. Tracks, state and the session's place
        in its room stay; until then media keeps the old path."""
        async with self._restart_lock:
            if self._closing:
                raise SessionNotFound(self.id)
            if self.state != "connected" or self.pulled:
                raise IceRestartRefused("ICE restarts only on a connected session")
            now = time.monotonic()
            if now - self._restarted_at < RESTART_SPACING:
                raise RestartTooSoon("at most one ICE restart a second")
            self._restarted_at = now
            await self._drop_restart()
            settings = self._engine.settings
            restart = seam.IceRestart(
                self.ice, tuple(settings.ice_addresses), settings.udp_ports, self.consent
            )
            restart.set_remote(remote)
            self._restart = restart
            self.consent.hold = True  # the old path may be dead: no expiry while we look
            await restart.gather()
            if self._restart is not restart:  # the session closed meanwhile
                raise SessionNotFound(self.id)
            if not restart.local_candidates():
                await self._drop_restart()
                raise AtCapacity("no UDP port free for an ICE restart")
            for candidate in candidates:
                await self.add_remote_candidate(candidate)
            if complete:
                await self.add_remote_candidate(None)
            self._restart_task = asyncio.create_task(
                self._finish_restart(restart), name=f"sfu-ice-restart-{self.id}"
            )
            return restart.local_parameters(), restart.local_candidates()

    def is_ice_restart(self, offer: Offer) -> bool:
        """Whether a new offer from the peer restarts ICE: new credentials."""
        current = self._restart.remote_username if self._restart else seam.remote_username(self.ice)
        return offer.ice.usernameFragment != current

    async def restart_offer(self, offer: Offer) -> str:
        """A new offer restarting ICE (same DTLS fingerprint and media sections,
        new credentials): restart and answer with our new credentials."""
        if self._offer is None or self._offer_pending or any(line.pending for line in self.lines):
            raise IceRestartRefused("a renegotiation is under way")
        if [m.mid for m in offer.media] != [line.media.mid for line in self.lines]:
            raise IceRestartRefused("an ICE restart keeps the media sections")
        if _fingerprints(offer) != _fingerprints(self._offer):
            raise IceRestartRefused("an ICE restart keeps the DTLS certificate")
        parameters, candidates = await self.restart_ice(
            offer.ice, offer.candidates, offer.candidates_complete
        )
        transport = self._transport_description()
        transport.ice, transport.candidates = parameters, candidates
        self.answer_sdp = self._write([line.section() for line in self.lines], transport=transport)
        return self.answer_sdp

    async def _finish_restart(self, restart: seam.IceRestart) -> None:
        try:
            async with asyncio.timeout(self._engine.connect_timeout):
                await restart.connect()
        except (TimeoutError, ConnectionError) as exc:
            logger.info("session %s: ICE restart failed (%s); the old path stays", self.id, exc)
            metrics.ICE_RESTARTS.labels("failed").inc()
            if self._restart is restart:
                self._restart = None
                self.consent.hold = False
                await restart.abandon()
            return
        if self._restart is not restart or self._closing:
            return
        self._restart = None
        metrics.ICE_RESTARTS.labels("completed").inc()
        await restart.install(self._on_new_path)  # swaps at once, then closes the old path
        self.consent.hold = False
        logger.info("session %s: ICE restarted", self.id)

    def _on_new_path(self) -> None:
        """Send on the new path now, not at the next RTCP tick, and ask for a
        keyframe so that pictures resume without waiting for the viewer's PLI.
        The downlink estimate starts over: the old path's outage (its losses,
        its delays) is no measure of the new one, which is judged as a new
        viewer's link is (no estimate yet: no limit)."""
        if self.sender is None:
            return
        self.sender.refresh()
        self.downlink = DownlinkEstimate()
        if self.transport_cc is not None:
            self.transport_cc.new_path()
        self._adapt(time.monotonic())
        target = self._target()
        for down in self.downtracks:
            down.retarget(target)
            down.request_keyframe()  # the layer this viewer receives or waits for

    async def _drop_restart(self) -> None:
        restart, task = self._restart, self._restart_task
        self._restart = self._restart_task = None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled, it is gone either way
                pass
        if restart is not None:
            self.consent.hold = False
            await restart.abandon()

    def __repr__(self) -> str:
        return f"Session({self.role} {self.id[:8]} room={self.room!r} {self.state})"


class Announced:
    """A track announced on a call party's section before the other party
    sends it: what the section says we send (codec under the party's payload
    type, SSRC, RTX, msid), the up track that claimed it, and whether it was
    bound (once bound and dropped, a new track is offered anew)."""

    __slots__ = ("bound", "codec", "msid", "peer_codec", "rtx_payload_type", "rtx_ssrc", "ssrc", "up")

    def __init__(
        self,
        *,
        peer_codec: RTCRtpCodecParameters,
        codec: RTCRtpCodecParameters,
        ssrc: int,
        rtx_payload_type: int | None,
        rtx_ssrc: int,
        msid: str,
    ) -> None:
        self.peer_codec = peer_codec  # the party's own codec entry
        self.codec = codec  # as the section writes it
        self.ssrc = ssrc
        self.rtx_payload_type = rtx_payload_type
        self.rtx_ssrc = rtx_ssrc
        self.msid = msid
        self.up: UpTrack | None = None  # the other party's track that will be sent here
        self.bound = False


class MediaLine:
    """One media section: the peer's offer for it, what we receive on it (an
    up track) and what we send on it (a down track)."""

    def __init__(self, media: OfferedMedia) -> None:
        self.media = media
        self.up: UpTrack | None = None
        self.down: DownTrack | None = None
        self.down_codec: RTCRtpCodecParameters | None = None
        self.pending = False  # down offered by us, not yet answered
        self.transport_cc = False  # we stamp what we send on it (the session estimates)
        # a track announced in the answer before it exists (calls), bound to
        # ``down`` once the other party's track claims it; the section keeps
        # describing it as announced
        self.announced: Announced | None = None

    @property
    def rejected(self) -> bool:
        return self.media.kind not in ("audio", "video") or not self.media.codecs

    def section(self) -> AnswerSection:
        m = self.media
        announced = self.announced
        down = self.down
        sending = down is not None or announced is not None
        if self.up is None and not sending:
            return _unused_section(m)
        wanted = set()
        if sending:
            wanted = {EXT_TRANSPORT_CC} if self.transport_cc else set(SUBSCRIBER_EXTENSIONS)
        if self.up is not None:
            wanted.update(PUBLISHER_EXTENSIONS)
        extensions = sorted((i, uri) for uri, i in m.extensions.items() if uri in wanted)
        codecs = []
        if self.up is not None:
            codecs.append(self.up.codec)
        send = None
        if announced is not None:
            send = announced.codec
        elif down is not None and self.down_codec is not None:
            send = answer_codec(down.up.codec, self.down_codec, transport_cc=self.transport_cc)
        if send is not None and (not codecs or send.payloadType != codecs[0].payloadType):
            codecs.append(send)
        repairs = []
        if self.up is not None and self.up.rtx_payload_type is not None:
            repairs.append(rtx_codec(self.up.rtx_payload_type, self.up.codec))
        rtx_ssrc = None
        if announced is not None:
            if announced.rtx_payload_type is not None:
                repairs.append(rtx_codec(announced.rtx_payload_type, announced.peer_codec))
                rtx_ssrc = announced.rtx_ssrc
        elif down is not None and self.down_codec is not None:
            if down.rtx_payload_type is not None:
                repairs.append(rtx_codec(down.rtx_payload_type, self.down_codec))
                rtx_ssrc = down.rtx_ssrc
        for repair in repairs:
            if all(c.payloadType != repair.payloadType for c in codecs):
                codecs.append(repair)
        direction = {
            (True, True): "sendrecv",
            (True, False): "recvonly",
            (False, True): "sendonly",
        }[(self.up is not None, sending)]
        if announced is not None:
            ssrc: int | None = announced.ssrc
            msid: str | None = announced.msid
        else:
            ssrc = down.ssrc if down is not None else None
            msid = f"{down.up.publisher.id} {down.up.track_id}" if down is not None else None
        return AnswerSection(
            kind=m.kind,
            mid=m.mid,
            protocol=m.protocol,
            direction=direction,
            codecs=codecs,
            ssrc=ssrc,
            msid=msid,
            extensions=extensions,
            recv_rids=[r for r in m.rids if self.up.layer_by_rid(r)]
            if self.up is not None and self.up.simulcast
            else [],
            rtx_ssrc=rtx_ssrc,
        )


def header_extension(data: bytes, ext_id: int) -> bytes | None:
    """The value of header extension ``ext_id`` in an RTP packet (RFC 8285,
    one-byte or two-byte form), or None."""
    n = len(data)
    pos = 12 + ((data[0] & 0x0F) << 2)
    if not data[0] & 0x10 or n < pos + 4:
        return None
    profile = (data[pos] << 8) | data[pos + 1]
    end = pos + 4 + (((data[pos + 2] << 8) | data[pos + 3]) << 2)
    pos += 4
    if end > n:
        return None
    if profile == 0xBEDE:
        while pos < end:
            b = data[pos]
            if b == 0:
                pos += 1
                continue
            x_id, length = b >> 4, (b & 0x0F) + 1
            if x_id == 15:
                return None
            if x_id == ext_id:
                return data[pos + 1 : pos + 1 + length] if pos + 1 + length <= end else None
            pos += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while pos + 1 < end:
            x_id = data[pos]
            if x_id == 0:
                pos += 1
                continue
            length = data[pos + 1]
            if x_id == ext_id:
                return data[pos + 2 : pos + 2 + length] if pos + 2 + length <= end else None
            pos += 2 + length
    return None


class _FirSink:
    """RTCP with media SSRC 0: FIR carries its target SSRC in the FCI; REMB
    (PSFB 15) is the subscriber's whole downlink estimate."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if not isinstance(packet, RtcpPsfbPacket):
            return
        try:
            if packet.fmt == RTCP_PSFB_FIR and len(packet.fci) >= 8:
                for i in range(0, len(packet.fci) - 7, 8):
                    ssrc = int.from_bytes(packet.fci[i : i + 4], "big")
                    for down in self.session.downtracks:
                        if down.ssrc == ssrc:
                            down.keyframe_requests += 1
                            down.request_keyframe()
            elif packet.fmt == RTCP_PSFB_APP and packet.fci[:4] == b"REMB":
                self.session.on_remb(unpack_remb_fci(packet.fci)[0])
        except Exception:  # an exception here would end the transport's receive loop
            logger.exception("RTCP feedback handling failed")


def _fingerprints(offer: Offer) -> set[tuple[str, str]]:
    return {(f.algorithm.lower(), f.value.upper()) for f in offer.dtls.fingerprints}


def _unused_section(media: Any) -> AnswerSection:
    """A media section we do not use: inactive with the peer's first codec
    (peers such as aiortc reject a rejected audio/video section without one),
    or rejected (port 0) when it is not audio/video."""
    if media.kind in ("audio", "video") and media.codecs and media.rtcp_mux:
        codec = answer_codec(media.codecs[0], media.codecs[0])
        codec.rtcpFeedback = []
        return AnswerSection(
            kind=media.kind,
            mid=media.mid,
            protocol=media.protocol,
            direction="inactive",
            codecs=[codec],
        )
    return AnswerSection(
        kind=media.kind,
        mid=media.mid,
        protocol=media.protocol,
        direction="inactive",
        codecs=[],
        rejected=True,
        fmt=media.fmt[:1],
    )


__all__ = ["Session"]
