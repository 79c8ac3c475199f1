// window.netlab: the browser side of bench/netlab.py, on a page at <server origin>/__netlab__.
//
// Through airwave: publish() and watch() use the web app's own WHIP/WHEP client (/static/js/whip.js,
// served by the server under test), so the bench drives the code real viewers run.
// Without a server: direct() / offer() / answer() / accept() make a page-to-page connection whose
// signaling the Python side carries. Every connection is sampled with getStats() once a second;
// summary() reduces the samples after the first ``skipS`` seconds.
const SAMPLE_MS = 1000;
const MAX_SAMPLES = 900;
const connections = new Map();  // name -> {pc, media, samples, started, timer, video}

const INBOUND = ["framesDecoded", "framesPerSecond", "frameHeight", "frameWidth", "totalFreezesDuration",
  "freezeCount", "packetsLost", "packetsReceived", "retransmittedPacketsReceived", "keyFramesDecoded",
  "bytesReceived", "nackCount", "pliCount", "firCount", "jitter", "framesDropped", "totalPausesDuration"];
const OUTBOUND = ["rid", "frameHeight", "frameWidth", "framesPerSecond", "framesSent", "targetBitrate",
  "bytesSent", "qualityLimitationReason", "retransmittedPacketsSent", "nackCount", "pliCount", "active"];
const PAIR = ["currentRoundTripTime", "availableIncomingBitrate", "availableOutgoingBitrate"];

function pick(report, names) {
  const out = {};
  for (const name of names) if (report[name] !== undefined) out[name] = report[name];
  return out;
}

async function app(token) {
  const [whip, auth] = await Promise.all([import("/static/js/whip.js"), import("/static/js/session.js")]);
  auth.session.token = token;
  return whip;
}

function videoElement(name) {
  const video = document.createElement("video");
  Object.assign(video, { autoplay: true, muted: true, playsInline: true, id: `video-${name}` });
  document.body.append(video);
  return video;
}

function attach(name, pc, media = null) {
  const entry = { pc, media, samples: [], started: performance.now(), video: null };
  entry.timer = setInterval(() => sample(entry).catch(() => {}), SAMPLE_MS);
  connections.set(name, entry);
  return entry;
}

function entryOf(name) {
  const entry = connections.get(name);
  if (!entry) throw new Error(`no connection named ${name}`);
  return entry;
}

async function sample(entry) {
  if (entry.pc.connectionState === "closed") return;
  const stats = await entry.pc.getStats();
  const byId = new Map();
  stats.forEach((report) => byId.set(report.id, report));
  const point = { t: performance.now(), inbound: null, outbound: {}, pair: null, transport: null,
    connectionState: entry.pc.connectionState };
  stats.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video"
        && (!point.inbound || (report.framesDecoded || 0) >= (point.inbound.framesDecoded || 0))) {
      point.inbound = pick(report, INBOUND);
    }
    if (report.type === "outbound-rtp" && report.kind === "video") {
      point.outbound[report.rid || "-"] = pick(report, OUTBOUND);
    }
    if (report.type === "transport") {
      point.transport = { id: report.id, dtlsState: report.dtlsState, iceState: report.iceState,
        selectedCandidatePairChanges: report.selectedCandidatePairChanges,
        iceLocalUsernameFragment: report.iceLocalUsernameFragment,
        remoteFingerprint: (byId.get(report.remoteCertificateId) || {}).fingerprint };
      const pair = byId.get(report.selectedCandidatePairId);
      if (pair) {
        const local = byId.get(pair.localCandidateId) || {};
        const remote = byId.get(pair.remoteCandidateId) || {};
        point.pair = { ...pick(pair, PAIR), local: `${local.address}:${local.port}`,
          remote: `${remote.address}:${remote.port}` };
      }
    }
  });
  entry.samples.push(point);
  if (entry.samples.length > MAX_SAMPLES) entry.samples.shift();
}

function median(values) {
  const sorted = values.filter((v) => typeof v === "number").sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
}

function delta(first, last, key) {
  if (!first || !last || last[key] === undefined) return null;
  return last[key] - (first[key] || 0);
}

function summarise(samples) {
  if (samples.length < 2) return { samples: samples.length };
  const first = samples[0];
  const last = samples[samples.length - 1];
  const seconds = (last.t - first.t) / 1000;
  const out = { seconds: +seconds.toFixed(2), samples: samples.length, connectionState: last.connectionState };
  const inbound = samples.map((s) => s.inbound).filter(Boolean);
  if (inbound.length >= 2) {
    const a = first.inbound || inbound[0];
    const b = last.inbound || inbound[inbound.length - 1];
    const heights = inbound.map((s) => s.frameHeight);
    out.inbound = {
      fps: delta(a, b, "framesDecoded") / seconds,
      freezePct: 100 * delta(a, b, "totalFreezesDuration") / seconds,
      freezes: delta(a, b, "freezeCount"),
      pausePct: 100 * delta(a, b, "totalPausesDuration") / seconds,
      packetsLost: delta(a, b, "packetsLost"),
      packetsReceived: delta(a, b, "packetsReceived"),
      retransmittedPacketsReceived: delta(a, b, "retransmittedPacketsReceived"),
      keyFramesDecoded: delta(a, b, "keyFramesDecoded"),
      nacks: delta(a, b, "nackCount"),
      plis: delta(a, b, "pliCount"),
      framesDropped: delta(a, b, "framesDropped"),
      kbps: 8 * delta(a, b, "bytesReceived") / seconds / 1000,
      heightMedian: median(heights),
      heightMin: Math.min(...heights.map((h) => h || 0)),
      heightMax: Math.max(...heights.map((h) => h || 0)),
      heightLast: b.frameHeight || 0,
      framesDecodedTotal: b.framesDecoded || 0,
    };
  }
  const rids = new Set(samples.flatMap((s) => Object.keys(s.outbound)));
  if (rids.size) {
    out.outbound = {};
    for (const rid of rids) {
      const a = first.outbound[rid];
      const b = last.outbound[rid];
      out.outbound[rid] = {
        fps: a && b ? delta(a, b, "framesSent") / seconds : null,
        kbps: a && b ? 8 * delta(a, b, "bytesSent") / seconds / 1000 : null,
        heightMedian: median(samples.map((s) => s.outbound[rid] && s.outbound[rid].frameHeight)),
        heightLast: b ? b.frameHeight || 0 : 0,
        targetBitrateLast: b ? b.targetBitrate || null : null,
        qualityLimitationReason: b ? b.qualityLimitationReason : null,
        retransmittedPacketsSent: a && b ? delta(a, b, "retransmittedPacketsSent") : null,
      };
    }
  }
  const pairs = samples.map((s) => s.pair).filter(Boolean);
  if (pairs.length) {
    out.pair = {
      rttMsMedian: 1000 * median(pairs.map((p) => p.currentRoundTripTime)),
      availableIncomingKbpsMedian: median(pairs.map((p) => p.availableIncomingBitrate)) / 1000,
      availableOutgoingKbpsMedian: median(pairs.map((p) => p.availableOutgoingBitrate)) / 1000,
      paths: [...new Set(pairs.map((p) => `${p.local} -> ${p.remote}`))],
    };
  }
  const transports = samples.map((s) => s.transport).filter(Boolean);
  if (transports.length) {
    out.transport = {
      ids: [...new Set(transports.map((t) => t.id))],
      dtlsStates: [...new Set(transports.map((t) => t.dtlsState))],
      ufrags: [...new Set(transports.map((t) => t.iceLocalUsernameFragment).filter(Boolean))],
      remoteFingerprints: [...new Set(transports.map((t) => t.remoteFingerprint).filter(Boolean))],
      selectedCandidatePairChanges: delta(transports[0], transports[transports.length - 1],
        "selectedCandidatePairChanges"),
    };
  }
  return out;
}

function connected(pc, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (pc.connectionState === "connected") return resolve();
    const timer = setTimeout(() => reject(new Error(`not connected after ${timeoutMs} ms: ${pc.connectionState}`)),
      timeoutMs);
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") { clearTimeout(timer); resolve(); }
    });
  });
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, 3000);
  });
}

async function camera(width, height) {
  return navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: width }, height: { ideal: height } }, audio: true });
}

window.netlab = {
  /** WHIP through the web app's client; returns what was negotiated. */
  async publish({ name = "publisher", room, token, simulcast = false, width = 1280, height = 720 }) {
    const whip = await app(token);
    const media = await whip.publish(room, await camera(width, height), { simulcast });
    attach(name, media.pc, media);
    const video = media.pc.getSenders().find((s) => s.track && s.track.kind === "video");
    return { location: media.location, etag: media.etag,
      encodings: video ? video.getParameters().encodings.map((e) => e.rid || "-") : [] };
  },

  /** WHEP through the web app's client, played in a muted <video>. */
  async watch({ name = "viewer", room, token }) {
    const whip = await app(token);
    const video = videoElement(name);
    const media = await whip.watch(room, (stream) => { video.srcObject = stream; });
    attach(name, media.pc, media).video = video;
    return { location: media.location, etag: media.etag };
  },

  /** A page-to-page connection (no server): ``send`` takes the camera, else it receives. */
  async direct({ name, send, width = 1280, height = 720 }) {
    const pc = new RTCPeerConnection();
    const entry = attach(name, pc);
    if (send) {
      const stream = await camera(width, height);
      for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    } else {
      const video = videoElement(name);
      const stream = new MediaStream();
      pc.addEventListener("track", (event) => { stream.addTrack(event.track); video.srcObject = stream; });
      entry.video = video;
    }
  },
  async offer(name) {
    const { pc } = entryOf(name);
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    return pc.localDescription.sdp;
  },
  async answer(name, sdp) {
    const { pc } = entryOf(name);
    await pc.setRemoteDescription({ type: "offer", sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    return pc.localDescription.sdp;
  },
  async accept(name, sdp) {
    await entryOf(name).pc.setRemoteDescription({ type: "answer", sdp });
  },

  /** Sample a connection the page made itself (e.g. the web app's call: window.airwave.call.connection.pc). */
  observe(name, pc) {
    if (connections.has(name)) clearInterval(connections.get(name).timer);
    attach(name, pc);
  },

  async connected(name, timeoutMs = 20000) {
    await connected(entryOf(name).pc, timeoutMs);
  },
  /** RFC 9725 ICE restart of a WHIP/WHEP connection (true when the server took it). */
  async restartIce(name) {
    const entry = entryOf(name);
    if (!entry.media) throw new Error(`${name} is not a WHIP/WHEP session`);
    return entry.media.restartIce("netlab");
  },
  state(name) {
    const { pc } = entryOf(name);
    return { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState };
  },
  latest(name) {
    const { samples } = entryOf(name);
    return samples.length ? samples[samples.length - 1] : null;
  },
  summary(name, skipS = 10) {
    const entry = entryOf(name);
    const from = entry.started + skipS * 1000;
    return summarise(entry.samples.filter((s) => s.t >= from));
  },
  async stop(name) {
    const entry = entryOf(name);
    clearInterval(entry.timer);
    if (entry.media) await entry.media.stop();
    else entry.pc.close();
    connections.delete(name);
  },
};
