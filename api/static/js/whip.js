// WHIP (publish) and WHEP (watch) with fetch, as RFC 9725 describes:
// POST the offer (application/sdp), 201 with the answer and a Location; DELETE the Location to stop.
// The offer carries every local candidate (we wait for ICE gathering), so no trickle PATCH is needed.
import { errorFrom } from "./api.js";
import { AppError } from "./errors.js";
import { session } from "./session.js";

const GATHERING_LIMIT_MS = 3000;

/** STUN/TURN from GET /api/v1/ice-servers: the server's own, never a third party's. */
export async function iceServers() {
  try {
    const response = await fetch("/api/v1/ice-servers", { headers: { Authorization: `Bearer ${session.token}` } });
    if (response.ok) return (await response.json()).iceServers || [];
  } catch { /* fall back to host candidates only */ }
  return [];
}

/** Resolves when ICE gathering completes, or after GATHERING_LIMIT_MS whatever it gathered. */
export function gatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, GATHERING_LIMIT_MS);
  });
}

export class MediaSession {
  constructor(pc, location) {
    this.pc = pc;
    this.location = location;
  }

  /** End the session: DELETE its URL (the server closes the media), then close our side. */
  async stop() {
    const location = this.location;
    this.location = null;
    if (location) {
      try {
        await fetch(location, { method: "DELETE", headers: { Authorization: `Bearer ${session.token}` } });
      } catch { /* the server is gone: nothing left to end */ }
    }
    this.pc.close();
  }
}

async function negotiate(pc, endpoint) {
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  let response;
  try {
    response = await fetch(endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${session.token}` },
      body: pc.localDescription.sdp,
    });
  } catch {
    throw new AppError("network", "The server cannot be reached.");
  }
  if (response.status !== 201) throw await errorFrom(response);
  const location = new URL(response.headers.get("Location"), window.location.href).href;
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  return location;
}

/** Publish a camera/microphone stream into a room over WHIP. */
export async function publish(roomId, stream) {
  const pc = new RTCPeerConnection({ iceServers: await iceServers() });
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  try {
    return new MediaSession(pc, await negotiate(pc, `/whip/${encodeURIComponent(roomId)}`));
  } catch (error) {
    pc.close();
    throw error;
  }
}

/** Watch a room over WHEP; ``onStream`` gets the MediaStream of the room's tracks. */
export async function watch(roomId, onStream) {
  const pc = new RTCPeerConnection({ iceServers: await iceServers() });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => {
    stream.addTrack(event.track);
    onStream(stream);
  });
  try {
    return new MediaSession(pc, await negotiate(pc, `/whep/${encodeURIComponent(roomId)}`));
  } catch (error) {
    pc.close();
    throw error;
  }
}

/** The inbound video statistics of a connection: frames decoded so far (the tests read this too). */
export async function framesDecoded(pc) {
  let frames = 0;
  const stats = await pc.getStats();
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video") frames += report.framesDecoded || 0;
  });
  return frames;
}
