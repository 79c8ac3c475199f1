"""aiortc call parties for the calls tests, built on the sfu/ tests' peers and media."""

from __future__ import annotations

import asyncio

import av
from aiortc import RTCSessionDescription

from tests.sfu.sfu_media import EncodedFrame
from tests.sfu.sfu_peers import PacketTrack, Viewer, _watch_keyframe_requests, client_pc

from .call_clients import Party


class CallPeer:
    """One party's RTCPeerConnection: sends pre-encoded VP8 (sendrecv), records
    the encoded frames it receives before its decoder, and answers the
    server's renegotiation offers through the party's socket."""

    def __init__(self, party: Party, call_id: str, frames: list[EncodedFrame]) -> None:
        self.party = party
        self.call_id = call_id
        self.pc = client_pc()
        self.track = PacketTrack("video", frames)
        self.transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        # the server asks for a keyframe for a receiver that joins late (PLI)
        _watch_keyframe_requests(self.transceiver.sender, self.track)
        self.recorder = Viewer.__new__(Viewer)  # the sfu viewers' receiver tap, on our receiver
        self.recorder.frames = {"video": []}
        self.recorder.payloads = {"video": []}
        self._tapped = False
        self.offers_answered = 0
        party.client.on("call:sdp_offer", self._server_offer)

    async def join(self) -> dict:
        """Offer to the server (``call:sdp_offer``) and apply its answer."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        ack = await self.party.call("call:sdp_offer", {"callId": self.call_id, "sdp": self.pc.localDescription.sdp})
        assert "sdp" in ack, ack
        await self.pc.setRemoteDescription(RTCSessionDescription(ack["sdp"], "answer"))
        self._tap()
        return ack

    async def _server_offer(self, data: dict) -> None:
        if data.get("callId") != self.call_id:
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
        self._tap()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        ack = await self.party.call("call:sdp_answer", {"callId": self.call_id, "sdp": self.pc.localDescription.sdp})
        assert ack.get("callId") == self.call_id, ack
        self.offers_answered += 1

    def _tap(self) -> None:
        if not self._tapped:
            self._tapped = True
            Viewer._tap(self.recorder, self.transceiver.receiver, "video")

    @property
    def frames(self) -> list[bytes]:
        return [data for _, data in self.recorder.frames["video"]]

    async def decoded_frame(self) -> av.VideoFrame:
        """A frame out of aiortc's own decoder."""
        return await asyncio.wait_for(self.transceiver.receiver.track.recv(), 5)

    async def close(self) -> None:
        await self.pc.close()
