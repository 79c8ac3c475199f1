// Call: who is online, call them; the callee answers or rejects; both see the remaining time,
// the warning, Extend (works when both press it), and why the call ended.
//
// Media as the calls feature does it: each party publishes its camera with
// call:sdp_offer {direction: "send"} and, once the other party's media is up
// (peerReady in that ack, or call:peer_ready), receives it with
// call:sdp_offer {direction: "recv"}. Two one-way connections per party.
import { api, displayName } from "./api.js";
import { AppError } from "./errors.js";
import { session } from "./session.js";
import { listen, request } from "./socket.js";
import { action, expose, formatSeconds, h, showError, showInfo } from "./ui.js";

const ONLINE_REFRESH_MS = 3000;
const GATHERING_LIMIT_MS = 3000;
const END_REASONS = {
  hangup: "hung up",
  rejected: "declined",
  missed: "no answer",
  busy: "they were in another call",
  timeout: "the time ran out",
  disconnected: "the connection was lost",
  server_shutdown: "the server stopped",
};

// An incoming call that arrived while another page was open (see listenForCalls).
let waitingCall = null;
let callPageOpen = false;

/** Called once after sign-in: an incoming call brings the person to the Call page. */
export async function listenForCalls() {
  await listen("call:incoming", (incoming) => {
    waitingCall = incoming;
    if (!callPageOpen) location.hash = "#/call";
  });
  await listen("call:ended", (ended) => {
    if (waitingCall && waitingCall.callId === ended.callId) waitingCall = null;
  });
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, GATHERING_LIMIT_MS);
  });
}

/** One direction of a call's media: an RTCPeerConnection negotiated with call:sdp_offer. */
async function callConnection(callId, direction, iceServers, { stream, onTrack }) {
  const pc = new RTCPeerConnection({ iceServers });
  if (direction === "send") {
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  } else {
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const remote = new MediaStream();
    pc.addEventListener("track", (event) => { remote.addTrack(event.track); onTrack(remote); });
  }
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    const ack = await request("call:sdp_offer", { callId, direction, sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: "answer", sdp: ack.sdp });
    return { pc, ack };
  } catch (error) {
    pc.close();
    throw error;
  }
}

export async function mount(root) {
  callPageOpen = true;
  let call = null;  // {id, peerId, role, endsAt, iceServers, camera, send, recv}
  let tick = null;
  let onlineTimer = null;
  let stopListening = [];

  const remoteVideo = h("video", { id: "call-remote", autoplay: true, playsinline: true });
  const localVideo = h("video", { id: "call-local", class: "pip", autoplay: true, muted: true, playsinline: true });
  localVideo.muted = true;
  const overlay = h("div", { class: "overlay", id: "call-overlay" }, "Pick someone who is online to call them.");
  const state = h("div", { class: "call-state", id: "call-state" }, "Not in a call");
  const remaining = h("div", { class: "timer", id: "call-remaining" }, "");
  const warning = h("p", { id: "call-warning", hidden: true });
  const extendStatus = h("p", { class: "muted", id: "extend-status" });
  const extend = h("button", { type: "button", id: "call-extend", hidden: true }, "Extend");
  const hangup = h("button", { type: "button", class: "danger", id: "call-hangup", hidden: true }, "Hang up");
  const ended = h("p", { id: "call-ended", hidden: true });
  const incoming = h("section", { class: "panel incoming", id: "incoming", hidden: true });
  const online = h("ul", { class: "list", id: "online-users" }, h("li", { class: "muted" }, "Looking…"));

  root.replaceChildren(h("div", { class: "stage", id: "call-page" },
    h("div", {},
      h("div", { class: "video-box" }, remoteVideo, localVideo, overlay),
      h("div", { class: "row" }, state, remaining, extend, hangup),
      warning, extendStatus, ended),
    h("div", { class: "side" }, incoming,
      h("section", { class: "panel" }, h("h2", {}, "Online now"), online,
        h("p", { class: "muted" }, "Open this page in another browser window, sign in with another name, ",
          "and call each other.")))));

  // ---------------------------------------------------------------- online list
  async function refreshOnline() {
    try {
      const { users } = await api("GET", "/api/v1/dev/online");
      online.replaceChildren(...(users.length ? users.map((user) => h("li", { dataset: { userId: user.userId } },
        h("span", {}, user.name),
        action(h("button", { type: "button", class: "call-button", disabled: Boolean(call) }, "Call"),
          () => placeCall(user.userId, user.name)))) : [h("li", { class: "muted" }, "Nobody else is online.")]));
    } catch (error) {
      if (error.status === 404) {
        online.replaceChildren(h("li", { class: "muted" },
          "The online list is part of the development sign-in, which is off on this server."));
        clearInterval(onlineTimer);
      } else {
        showError(error);
      }
    }
  }

  // ---------------------------------------------------------------- call states
  async function camera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new AppError("insecure_page",
        "This browser gives no camera to this page: open it as http://localhost:8080 or over HTTPS.");
    }
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    localVideo.srcObject = stream;
    return stream;
  }

  function begin(details) {
    call = { send: null, recv: null, endsAt: null, ...details };
    expose("call", call);
    ended.hidden = true;
    warning.hidden = true;
    extendStatus.textContent = "";
    hangup.hidden = false;
    for (const button of online.querySelectorAll("button")) button.disabled = true;
  }

  async function placeCall(userId, name) {
    if (call) throw new AppError("in_call", "You are already in a call.");
    const stream = await camera();
    begin({ peerId: userId, peerName: name, role: "caller", camera: stream });
    state.textContent = `Calling ${name}…`;
    overlay.hidden = false;
    overlay.replaceChildren(`Calling ${name}…`);
    let ack;
    try {
      ack = await request("call:initiate", { to: userId, media: "video" });
    } catch (error) {
      finish(null);
      throw error;
    }
    call.id = ack.callId;
    call.iceServers = ack.iceServers || [];
    if (ack.status === "ended") finish(ack.endReason);
  }

  function showIncoming(offer) {
    incoming.hidden = false;
    incoming.dataset.callId = offer.callId;
    const answer = h("button", { type: "button", id: "call-answer" }, "Answer");
    const reject = h("button", { type: "button", class: "danger", id: "call-reject" }, "Reject");
    incoming.replaceChildren(h("h2", {}, "Incoming call"),
      h("p", { id: "incoming-from" }, `${displayName(offer.from)} is calling you (${offer.media}).`),
      h("div", { class: "row" }, answer, reject));
    action(answer, async () => {
      const stream = await camera();
      const ack = await request("call:answer", { callId: offer.callId });
      waitingCall = null;
      incoming.hidden = true;
      begin({ id: offer.callId, peerId: offer.from, peerName: displayName(offer.from), role: "callee",
        camera: stream, iceServers: ack.iceServers || offer.iceServers || [] });
      await connected(ack.endsAt);
    });
    action(reject, async () => {
      waitingCall = null;
      incoming.hidden = true;
      await request("call:reject", { callId: offer.callId, reason: "declined" });
    });
  }

  async function connected(endsAt) {
    state.textContent = `In a call with ${call.peerName}`;
    overlay.replaceChildren(`Connecting to ${call.peerName}…`);
    overlay.hidden = false;
    setEnd(endsAt);
    extend.hidden = !endsAt;
    tick = setInterval(showRemaining, 250);
    const { pc, ack } = await callConnection(call.id, "send", call.iceServers, { stream: call.camera });
    call.send = pc;
    if (ack.peerReady) await receive();
  }

  async function receive() {
    if (!call || !call.id) return;
    if (call.recv) call.recv.close();
    const { pc } = await callConnection(call.id, "recv", call.iceServers, {
      onTrack: (stream) => {
        remoteVideo.srcObject = stream;
        remoteVideo.addEventListener("playing", () => { overlay.hidden = true; }, { once: true });
      },
    });
    call.recv = pc;
  }

  function setEnd(endsAt) {
    if (!call) return;
    call.endsAt = endsAt || null;
    remaining.dataset.endsAt = endsAt ? String(endsAt) : "";
    showRemaining();
  }

  function showRemaining() {
    if (!call || !call.endsAt) {
      remaining.textContent = "";
      return;
    }
    remaining.textContent = formatSeconds(call.endsAt - Date.now() / 1000);
  }

  function finish(reason, duration) {
    clearInterval(tick);
    tick = null;
    if (call) {
      for (const pc of [call.send, call.recv]) if (pc) pc.close();
      if (call.camera) for (const track of call.camera.getTracks()) track.stop();
    }
    call = null;
    expose("call", null);
    localVideo.srcObject = null;
    remoteVideo.srcObject = null;
    hangup.hidden = true;
    extend.hidden = true;
    warning.hidden = true;
    remaining.textContent = "";
    remaining.classList.remove("warning");
    extendStatus.textContent = "";
    state.textContent = "Not in a call";
    overlay.hidden = false;
    overlay.replaceChildren("Pick someone who is online to call them.");
    if (reason) {
      ended.hidden = false;
      ended.dataset.reason = reason;
      const after = duration ? ` after ${formatSeconds(duration)}` : "";
      ended.textContent = `Call ended: ${reason} (${END_REASONS[reason] || reason})${after}.`;
    }
    refreshOnline();
  }

  action(hangup, async () => {
    if (!call || !call.id) {
      finish(null);
      return;
    }
    await request("call:end", { callId: call.id });
  });

  action(extend, async () => {
    if (!call) return;
    const ack = await request("call:extend_request", { callId: call.id });
    if (ack.extended) setEnd(ack.endsAt);
    else extendStatus.textContent = `Waiting for ${call.peerName} to press Extend too…`;
  });

  const mine = (event) => call && event.callId === call.id;
  stopListening = await Promise.all([
    listen("call:incoming", (offer) => {
      if (call) return;  // the server ends it as busy
      showIncoming(offer);
    }),
    listen("call:answered", (event) => {
      if (mine(event) && call.role === "caller") connected(event.endsAt).catch(showError);
    }),
    listen("call:rejected", (event) => {
      if (mine(event)) showInfo(`${call.peerName} declined the call.`);
    }),
    listen("call:peer_ready", (event) => {
      if (mine(event) && event.userId !== session.userId && call.send) receive().catch(showError);
    }),
    listen("call:timeout_warning", (event) => {
      if (!mine(event)) return;
      setEnd(event.endsAt);
      warning.hidden = false;
      warning.textContent = `The call ends in ${Math.round(event.remaining)} seconds. ` +
        "Press Extend to keep talking: it works when both of you press it.";
      remaining.classList.add("warning");
    }),
    listen("call:extend_requested", (event) => {
      if (mine(event) && event.by !== session.userId) {
        extendStatus.textContent = `${call.peerName} wants more time: press Extend to agree.`;
      }
    }),
    listen("call:extended", (event) => {
      if (!mine(event)) return;
      setEnd(event.endsAt);
      warning.hidden = true;
      remaining.classList.remove("warning");
      extendStatus.textContent = `Extended: the call now ends at ${new Date(event.endsAt * 1000).toLocaleTimeString()}.`;
    }),
    listen("call:ended", (event) => {
      if (mine(event)) finish(event.reason, event.duration);
      else if (!incoming.hidden && incoming.dataset.callId === event.callId) {
        incoming.hidden = true;
        showInfo(`You missed a call (${event.reason}).`);
      }
    }),
  ]);

  if (waitingCall) showIncoming(waitingCall);
  await refreshOnline();
  onlineTimer = setInterval(refreshOnline, ONLINE_REFRESH_MS);

  return {
    async leave() {
      callPageOpen = false;
      clearInterval(onlineTimer);
      for (const stop of stopListening) stop();
      if (call && call.id) await request("call:end", { callId: call.id }).catch(() => {});
      finish(null);
    },
  };
}
