// WHIP (publish) and WHEP (watch) with fetch, as RFC 9725 describes:
// POST the offer (application/sdp), 201 with the answer, a Location and an ETag; DELETE the Location to stop.
// The offer carries every local candidate (we wait for ICE gathering), so no trickle PATCH is needed.
// When the connection fails or the network changes, the session restarts ICE with a PATCH (RFC 9725 §4.4.1).
import { errorFrom } from "./api.js";
import { AppError } from "./errors.js";
import { session } from "./session.js";

const GATHERING_LIMIT_MS = 3000;
const SDPFRAG = "application/trickle-ice-sdpfrag";
/** Three layers of the camera (RFC 8853 rids): a quarter, half and full resolution. */
export const SIMULCAST_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4 },
  { rid: "h", scaleResolutionDownBy: 2 },
  { rid: "f", scaleResolutionDownBy: 1 },
];

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

/** Resolves when the gathering started by the next setLocalDescription (an ICE restart's) ends:
 * call it before setLocalDescription, since iceGatheringState still says "complete" from the last one. */
export function freshGathering(pc) {
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icecandidate", check); resolve(); };
    const check = (event) => { if (!event.candidate) done(); };
    pc.addEventListener("icecandidate", check);
    setTimeout(done, GATHERING_LIMIT_MS);
  });
}

/** Calls ``restart`` when the connection fails or the device's network changes; returns the stopper. */
export function onNetworkChange(pc, restart) {
  const failed = () => { if (pc.connectionState === "failed") restart("connection failed"); };
  const online = () => restart("back online");
  const changed = () => restart("network changed");
  const connection = navigator.connection;
  pc.addEventListener("connectionstatechange", failed);
  window.addEventListener("online", online);
  if (connection) connection.addEventListener("change", changed);
  return () => {
    pc.removeEventListener("connectionstatechange", failed);
    window.removeEventListener("online", online);
    if (connection) connection.removeEventListener("change", changed);
  };
}

/** The ICE restart request of RFC 9725 §4.4.1: the first bundled m= section, its new ufrag/pwd
 * and candidates (RFC 8840 sdpfrag). */
export function iceFragment(sdp) {
  const lines = sdp.split(/\r?\n/).filter(Boolean);
  const group = lines.find((line) => line.startsWith("a=group:BUNDLE"));
  const first = lines.findIndex((line) => line.startsWith("m="));
  const next = lines.findIndex((line, i) => i > first && line.startsWith("m="));
  const section = lines.slice(first, next < 0 ? lines.length : next);
  const iceSession = lines.slice(0, first).filter((line) => line.startsWith("a=ice-"));
  const starting = (prefix) => section.filter((line) => line.startsWith(prefix));
  const fragment = [...iceSession, ...(group ? [group] : []), section[0], ...starting("a=mid:"),
    ...starting("a=ice-ufrag:"), ...starting("a=ice-pwd:"), ...starting("a=candidate:"), "a=end-of-candidates"];
  return fragment.join("\r\n") + "\r\n";
}

/** ``sdp`` (the remote answer) with the ICE credentials and candidates of the server's sdpfrag. */
export function withIceOf(sdp, fragment) {
  const frag = fragment.split(/\r?\n/);
  const ufrag = frag.find((line) => line.startsWith("a=ice-ufrag:"));
  const pwd = frag.find((line) => line.startsWith("a=ice-pwd:"));
  const candidates = frag.filter((line) => line.startsWith("a=candidate:"));
  if (!ufrag || !pwd) throw new Error("the server's ICE restart answer has no ice-ufrag/ice-pwd");
  const out = [];
  let inMedia = false;
  for (const line of sdp.split(/\r?\n/).filter(Boolean)) {
    if (line.startsWith("a=candidate:") || line === "a=end-of-candidates") continue;
    if (line.startsWith("a=ice-ufrag:")) { out.push(ufrag); continue; }
    if (line.startsWith("a=ice-pwd:")) { out.push(pwd); continue; }
    if (line.startsWith("m=")) {
      if (inMedia) out.push(...candidates, "a=end-of-candidates");
      inMedia = true;
    }
    out.push(line);
  }
  if (inMedia) out.push(...candidates, "a=end-of-candidates");
  return out.join("\r\n") + "\r\n";
}

export class MediaSession {
  constructor(pc, location, etag) {
    this.pc = pc;
    this.location = location;
    this.etag = etag;
    this.restarting = null;
    this.stopWatching = onNetworkChange(pc, (why) => this.restartIce(why));
  }

  /** ICE restart over PATCH (RFC 9725 §4.4.1); resolves true when the server took it. A server
   * without ICE restart answers 422: the session then goes on as it was (or stays failed). */
  restartIce(why = "asked") {
    if (!this.location || this.restarting) return this.restarting || Promise.resolve(false);
    this.restarting = this.patchIce(why).finally(() => { this.restarting = null; });
    return this.restarting;
  }

  async patchIce(why) {
    const pc = this.pc;
    pc.restartIce();
    const gathered = freshGathering(pc);
    await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
    await gathered;
    let response;
    try {
      response = await fetch(this.location, {
        method: "PATCH",
        headers: { "Content-Type": SDPFRAG, "If-Match": "*", Authorization: `Bearer ${session.token}` },
        body: iceFragment(pc.localDescription.sdp),
      });
    } catch {
      response = null;
    }
    if (!response || response.status !== 200) {
      console.warn(`ICE restart (${why}) refused: ${response ? response.status : "server unreachable"}`);
      if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
      return false;
    }
    this.etag = response.headers.get("ETag") || this.etag;
    await pc.setRemoteDescription({ type: "answer", sdp: withIceOf(pc.remoteDescription.sdp, await response.text()) });
    return true;
  }

  /** End the session: DELETE its URL (the server closes the media), then close our side. */
  async stop() {
    const location = this.location;
    this.location = null;
    this.stopWatching();
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
  return { location, etag: response.headers.get("ETag") };
}

/** The camera as three simulcast layers when the browser takes it, else as one. */
function addVideo(pc, track, stream, simulcast) {
  if (simulcast) {
    try {
      return pc.addTransceiver(track, { direction: "sendonly", streams: [stream], sendEncodings: SIMULCAST_LAYERS });
    } catch { /* this browser refuses simulcast: one layer */ }
  }
  return pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
}

/** A server that declines simulcast leaves the first (quarter-size) layer: send it at full size. */
async function fullSizeIfOneLayer(transceiver) {
  const parameters = transceiver.sender.getParameters();
  if (parameters.encodings && parameters.encodings.length === 1 && parameters.encodings[0].scaleResolutionDownBy > 1) {
    parameters.encodings[0].scaleResolutionDownBy = 1;
    try {
      await transceiver.sender.setParameters(parameters);
    } catch { /* keep what the browser sends */ }
  }
}

/** Publish a camera/microphone stream into a room over WHIP (video as simulcast unless told not to). */
export async function publish(roomId, stream, { simulcast = true } = {}) {
  const pc = new RTCPeerConnection({ iceServers: await iceServers() });
  const video = [];
  for (const track of stream.getTracks()) {
    if (track.kind === "video") video.push(addVideo(pc, track, stream, simulcast));
    else pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  }
  try {
    const { location, etag } = await negotiate(pc, `/whip/${encodeURIComponent(roomId)}`);
    for (const transceiver of video) await fullSizeIfOneLayer(transceiver);
    return new MediaSession(pc, location, etag);
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
    const { location, etag } = await negotiate(pc, `/whep/${encodeURIComponent(roomId)}`);
    return new MediaSession(pc, location, etag);
  } catch (error) {
    pc.close();
    throw error;
  }
}

/** The inbound video statistics of a connection: frames decoded so far (the tests read this too). */
export async function framesDecoded(pc) {
  return (await receivedVideo(pc)).framesDecoded;
}

/** What the connection receives: frames decoded, and the size and rate of the layer it gets. */
export async function receivedVideo(pc) {
  const video = { framesDecoded: 0, frameWidth: 0, frameHeight: 0, framesPerSecond: 0 };
  const stats = await pc.getStats();
  stats.forEach((report) => {
    if (report.type !== "inbound-rtp" || report.kind !== "video") return;
    video.framesDecoded += report.framesDecoded || 0;
    if ((report.frameHeight || 0) > video.frameHeight) {
      Object.assign(video, { frameWidth: report.frameWidth, frameHeight: report.frameHeight,
        framesPerSecond: report.framesPerSecond || 0 });
    }
  });
  return video;
}
