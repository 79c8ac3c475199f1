// A call's media: ONE sendrecv RTCPeerConnection per party, negotiated with the server (docs/calls.md).
//
//  1. We offer: our camera and microphone as sendrecv, call:sdp_offer {callId, sdp}; the ack
//     {callId, sessionId, sdp} is the server's answer.
//  2. The answer announces the other party's tracks even before they reach the server (their media
//     flows there later, no new offer). A track that fits no announcement is offered to us instead:
//     call:sdp_offer {callId, sessionId, sdp} from the server; we answer with call:sdp_answer {callId, sdp}.
//  3. Candidates: the offer carries the ones gathered within whip.js GATHERING_LIMIT_MS; any later one is
//     trickled with call:ice_candidate {callId, candidate} (null ends them). The server does not trickle.
//
// ICE restart: when the connection fails or the network changes, we offer again on the SAME
// connection with new ICE credentials (pc.restartIce(), call:sdp_offer). A server that restarts ICE in
// place acks with our sessionId and the connection carries on; an ack with another sessionId means the
// server replaced our session: ``onReplaced`` then sets up a new CallConnection (call.js).
import { AppError } from "./errors.js";
import { request } from "./socket.js";
import { freshGathering, gatheringComplete, onNetworkChange } from "./whip.js";

const ICE_RESTARTS = 3;  // per connection

export class CallConnection {
  /** @param onRemote called with the MediaStream of the other party's tracks (once it has a track). */
  constructor(callId, iceServers, { stream, onRemote, onReplaced = () => {} }) {
    this.callId = callId;
    this.onReplaced = onReplaced;
    this.iceRestarts = 0;
    this.sessionId = null;
    this.closed = false;
    this.pc = new RTCPeerConnection({ iceServers });
    this.remote = new MediaStream();
    for (const track of stream.getTracks()) {
      this.pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
    }
    this.pc.addEventListener("track", (event) => {
      if (!this.remote.getTracks().includes(event.track)) this.remote.addTrack(event.track);
      onRemote(this.remote);
    });
    // Candidates found after the offer left: trickled once the ack names our session.
    this.offerSent = false;
    this.lateCandidates = [];
    this.pc.addEventListener("icecandidate", (event) => {
      if (!this.offerSent) return;  // already in the offer's SDP
      this.lateCandidates.push(event.candidate ? event.candidate.toJSON() : null);
      this.trickle();
    });
    // Server offers wait for our own offer's answer: one negotiation at a time.
    this.negotiation = Promise.resolve();
    this.stopWatching = onNetworkChange(this.pc, (why) => this.restartIce(why));
  }

  /** Step 1: offer our tracks; resolves once the server's answer is set. */
  start() {
    this.negotiation = this.offer();
    return this.negotiation;
  }

  async offer() {
    try {
      await this.pc.setLocalDescription(await this.pc.createOffer());
      await gatheringComplete(this.pc);
      if (this.closed) return;
      const sdp = this.pc.localDescription.sdp;
      this.offerSent = true;
      const ack = await request("call:sdp_offer", { callId: this.callId, sdp });
      if (this.closed) return;
      this.sessionId = ack.sessionId;
      await this.pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
      this.trickle();
    } catch (error) {
      this.close();
      throw mediaError(error);
    }
  }

  /** Step 2: the server's call:sdp_offer (the other party's tracks). */
  answerServer(event) {
    const run = async () => {
      if (this.closed || (event.sessionId && this.sessionId && event.sessionId !== this.sessionId)) return;
      try {
        await this.pc.setRemoteDescription({ type: "offer", sdp: event.sdp });
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        if (this.closed) return;
        await request("call:sdp_answer", { callId: this.callId, sdp: this.pc.localDescription.sdp });
      } catch (error) {
        if (!this.closed) throw mediaError(error);
      }
    };
    // after our own offer's answer; a failed offer has already been reported
    this.negotiation = this.negotiation.catch(() => {}).then(run);
    return this.negotiation;
  }

  /** ICE restart through renegotiation: our tracks again, with new ICE credentials, on this connection. */
  restartIce(why = "asked") {
    if (this.closed || !this.sessionId || this.iceRestarts >= ICE_RESTARTS) return this.negotiation;
    this.iceRestarts += 1;
    const run = async () => {
      if (this.closed) return;
      this.offerSent = false;  // the new candidates go in the offer
      this.pc.restartIce();
      const gathered = freshGathering(this.pc);
      await this.pc.setLocalDescription(await this.pc.createOffer({ iceRestart: true }));
      await gathered;
      if (this.closed) return;
      this.offerSent = true;
      let ack;
      try {
        ack = await request("call:sdp_offer", { callId: this.callId, sdp: this.pc.localDescription.sdp });
      } catch (error) {
        console.warn(`ICE restart (${why}) refused: ${error && error.code ? error.code : error}`);
        if (this.pc.signalingState === "have-local-offer") await this.pc.setLocalDescription({ type: "rollback" });
        return;
      }
      if (this.closed) return;
      if (ack.sessionId !== this.sessionId) {
        console.warn(`ICE restart (${why}): the server replaced the session; connecting again`);
        this.close();
        this.onReplaced();
        return;
      }
      await this.pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
    };
    this.negotiation = this.negotiation.catch(() => {}).then(run).catch((error) => {
      if (!this.closed) console.warn(`ICE restart (${why}) failed: ${error && error.message ? error.message : error}`);
    });
    return this.negotiation;
  }

  /** Send the late candidates in order, once the ack has named our session. */
  trickle() {
    if (!this.sessionId || this.closed) return;
    const pending = this.lateCandidates.splice(0);
    if (!pending.length) return;
    this.trickling = (this.trickling || Promise.resolve()).then(async () => {
      for (const candidate of pending) {
        if (this.closed) return;
        try {
          await request("call:ice_candidate", { callId: this.callId, candidate });
        } catch { /* the offer's own candidates may still connect; a lost call shows as its end reason */ }
      }
    });
  }

  close() {
    this.closed = true;
    this.stopWatching();
    this.pc.close();
  }
}

/** A browser SDP failure in words (server refusals are AppErrors already). */
function mediaError(error) {
  if (error instanceof AppError) return error;
  return new AppError("media_failed",
    `The call's media could not be set up (${error && error.message ? error.message : error}).`);
}
