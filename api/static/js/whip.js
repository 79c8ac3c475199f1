// WHIP (publish) and WHEP (watch) with fetch, as RFC 9725 describes:
// POST the offer (application/sdp), 201 with the answer and a Location; DELETE the Location to stop.
// The offer carries every local candidate (we wait for ICE gathering), so no trickle PATCH is needed.
// When ICE fails (the network changed), restart(): pc.restartIce(), then PATCH the session URL with the
// new credentials and candidates (RFC 9725 section 4.4.1); the server answers with its own, same session.
import { errorFrom } from "./api.js";
import { AppError } from "./errors.js";
import { session } from "./session.js";

const GATHERING_LIMIT_MS = 3000;
const DISCONNECTED_RESTART_MS = 4000;  // a path silent this long is taken as lost (the server waits 30 s)

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

/** Call ``restart`` when ICE fails, or stays disconnected (a network change) for DISCONNECTED_RESTART_MS. */
export function restartWhenLost(pc, restart) {
  let timer = null;
  pc.addEventListener("iceconnectionstatechange", () => {
    clearTimeout(timer);
    if (pc.iceConnectionState === "failed") restart().catch(() => {});
    else if (pc.iceConnectionState === "disconnected") {
      timer = setTimeout(() => restart().catch(() => {}), DISCONNECTED_RESTART_MS);
    }
  });
}

export class MediaSession {
  constructor(pc, location) {
    this.pc = pc;
    this.location = location;
    this.restarting = null;
    restartWhenLost(pc, () => this.restart());
  }

  /** ICE restart: our new credentials and candidates PATCHed, the server's set into the answer. */
  restart() {
    if (!this.restarting) this.restarting = this.patchRestart().finally(() => { this.restarting = null; });
    return this.restarting;
  }

  async patchRestart() {
    const pc = this.pc;
    if (!this.location || pc.signalingState === "closed") return;
    pc.restartIce();
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    let response;
    try {
      response = await fetch(this.location, {
        method: "PATCH",
        headers: { "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*",
                   Authorization: `Bearer ${session.token}` },
        body: iceFragment(pc.localDescription.sdp),
      });
    } catch {
      response = null;
    }
    if (!response || response.status !== 200) {
      await pc.setLocalDescription({ type: "rollback" });
      throw response ? await errorFrom(response) : new AppError("network", "The server cannot be reached.");
    }
    await pc.setRemoteDescription({ type: "answer", sdp: withIce(pc.remoteDescription.sdp, await response.text()) });
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

const attribute = (text, name) => (text.match(new RegExp(`^a=${name}:(\\S+)`, "m")) || [])[1];
const candidateLines = (text) => text.split("\r\n").filter((line) => line.startsWith("a=candidate:"));

/** An offer's ICE as an SDP fragment (RFC 8840): credentials, its first media section, its candidates. */
function iceFragment(offer) {
  const section = offer.slice(offer.indexOf("\r\nm=") + 2);
  return [
    `a=ice-ufrag:${attribute(offer, "ice-ufrag")}`,
    `a=ice-pwd:${attribute(offer, "ice-pwd")}`,
    section.split("\r\n")[0],
    `a=mid:${attribute(section, "mid")}`,
    ...candidateLines(section),
    "a=end-of-candidates",
    "",
  ].join("\r\n");
}

/** The previous answer with the server's new credentials and candidates from its fragment. */
function withIce(answer, fragment) {
  const candidates = candidateLines(fragment).join("\r\n");
  return answer.split("\r\n")
    .filter((line) => !line.startsWith("a=candidate:") && line !== "a=end-of-candidates")
    .join("\r\n")
    .replace(/^a=ice-ufrag:\S+/gm, `a=ice-ufrag:${attribute(fragment, "ice-ufrag")}`)
    .replace(/^a=ice-pwd:\S+/gm,
      `a=ice-pwd:${attribute(fragment, "ice-pwd")}\r\n${candidates}\r\na=end-of-candidates`);
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
