// Call: who is online, call them; the callee answers or rejects; both see the remaining time,
// the warning, Extend (works when both press it), and why the call ended.
//
// Media as the calls feature does it (docs/calls.md): one sendrecv RTCPeerConnection per party,
// in callmedia.js. Each party offers its camera and microphone once the call is answered
// (call:sdp_offer, the ack is the server's answer); the other party's tracks arrive in that answer
// or in a later call:sdp_offer from the server, which the page answers with call:sdp_answer.
import { api, displayName } from "./api.js";
import { CallConnection } from "./callmedia.js";
import { AppError } from "./errors.js";
import { session } from "./session.js";
import { listen, request } from "./socket.js";
import { action, expose, formatSeconds, h, showError, showInfo } from "./ui.js";

const ONLINE_REFRESH_MS = 3000;
// No track from the other party this long after our connection was negotiated: offer again
// (a new session on the server picks up their tracks; theirs is offered ours). The two roles wait
// differently so both parties never offer again at the same moment. This recovers from the server
// missing the other party's tracks when both offer at once (the SFU's join_call race).
const REMOTE_MEDIA_WAIT_MS = { caller: 5000, callee: 8000 };
const MEDIA_ATTEMPTS = 3;
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

export async function mount(root) {
  callPageOpen = true;
  let call = null;  // {id, peerId, peerName, role, media, endsAt, iceServers, camera, connection (a CallConnection)}
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
  remoteVideo.addEventListener("playing", () => { if (call) overlay.hidden = true; });
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
  async function camera(media) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new AppError("insecure_page",
        "This browser gives no camera to this page: open it as http://localhost:8080 or over HTTPS.");
    }
    // an audio call sends no video: the server refuses video until both agree to upgrade
    const video = media === "audio" ? false : { width: 640, height: 480 };
    const stream = await navigator.mediaDevices.getUserMedia({ video, audio: true });
    localVideo.srcObject = stream;
    return stream;
  }

  function begin(details) {
    call = { connection: null, endsAt: null, media: "video", ...details };
    expose("call", call);
    ended.hidden = true;
    warning.hidden = true;
    extendStatus.textContent = "";
    hangup.hidden = false;
    for (const button of online.querySelectorAll("button")) button.disabled = true;
  }

  async function placeCall(userId, name) {
    if (call) throw new AppError("in_call", "You are already in a call.");
    const stream = await camera("video");
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
      const stream = await camera(offer.media);
      const ack = await request("call:answer", { callId: offer.callId });
      waitingCall = null;
      incoming.hidden = true;
      begin({ id: offer.callId, peerId: offer.from, peerName: displayName(offer.from), role: "callee",
        media: ack.media || offer.media, camera: stream, iceServers: ack.iceServers || offer.iceServers || [] });
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
    await joinMedia();
  }

  /** Our one sendrecv connection (a new one replaces the old: after a reconnect that lost the media). */
  async function joinMedia() {
    if (!call || !call.id) return;
    if (call.connection) call.connection.close();
    const connection = new CallConnection(call.id, call.iceServers, {
      stream: call.camera,
      onRemote: (stream) => {
        if (remoteVideo.srcObject !== stream) remoteVideo.srcObject = stream;
      },
      // an ICE restart the server answered with a new session: connect again (bounded by MEDIA_ATTEMPTS)
      onReplaced: () => {
        if (call && call.connection === connection && call.mediaAttempts < MEDIA_ATTEMPTS) joinMedia().catch(showError);
      },
    });
    call.connection = connection;
    call.mediaAttempts = (call.mediaAttempts || 0) + 1;
    await connection.start();
    watchRemoteMedia(connection);
  }

  function watchRemoteMedia(connection) {
    if (!call || call.connection !== connection) return;  // the call ended while we negotiated
    setTimeout(() => {
      if (!call || call.connection !== connection || connection.closed) return;
      if (connection.remote.getTracks().length) return;
      if (call.mediaAttempts >= MEDIA_ATTEMPTS) {
        showInfo(`No picture or sound from ${call.peerName} yet: their connection may be blocked.`);
        return;
      }
      joinMedia().catch(showError);
    }, REMOTE_MEDIA_WAIT_MS[call.role] || REMOTE_MEDIA_WAIT_MS.caller);
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
      if (call.connection) call.connection.close();
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
    listen("call:sdp_offer", (event) => {
      // the server offers the other party's tracks: answer on our connection
      if (mine(event) && call.connection) call.connection.answerServer(event).catch(showError);
    }),
    listen("call:resumed", (event) => {
      // this tab's socket reconnected; if our media did not survive, offer again
      if (mine(event) && event.status === "active" && !event.mediaConnected && call.connection) {
        call.iceServers = event.iceServers || call.iceServers;
        joinMedia().catch(showError);
      }
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
