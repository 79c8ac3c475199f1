// Go live: camera and microphone preview, a room with a title, publish over WHIP,
// the audience count, chat and gifts as they arrive, end the stream.
import { api, displayName } from "./api.js";
import { AppError } from "./errors.js";
import { session } from "./session.js";
import { audienceCounter, chatPanel } from "./room.js";
import { listen, request } from "./socket.js";
import { action, expose, h, showError, showInfo } from "./ui.js";
import { publish } from "./whip.js";

export async function mount(root) {
  let camera = null;   // the preview MediaStream
  let room = null;     // the room while live
  let whip = null;     // the WHIP session while live
  let chat = null;
  let stopListening = [];

  const preview = h("video", { id: "preview", autoplay: true, muted: true, playsinline: true });
  preview.muted = true;
  const badge = h("span", { class: "badge idle", id: "live-badge" }, "Preview");
  const overlay = h("div", { class: "overlay", id: "camera-overlay" }, "Starting the camera…");
  const title = h("input", { type: "text", id: "room-title", placeholder: "Stream title", maxlength: "200",
    value: `${session.name}'s stream` });
  const goLive = h("button", { class: "live", type: "button", id: "go-live", disabled: true }, "Go live");
  const end = h("button", { class: "danger", type: "button", id: "end-stream", hidden: true }, "End stream");
  const viewers = h("b", { id: "viewer-count" }, "0");
  const earnings = h("b", { id: "earnings" }, "0");
  const share = h("p", { class: "muted", id: "share" });
  const feed = h("ul", { class: "list", id: "gift-feed" }, h("li", { class: "muted" }, "No gifts yet."));
  const chatSlot = h("div", {}, h("section", { class: "panel muted" }, h("h2", {}, "Chat"),
    "Chat opens when you go live."));
  const refreshViewers = () => room && countViewers();
  let countViewers = () => {};

  root.replaceChildren(h("div", { class: "stage", id: "live-page" },
    h("div", {},
      h("div", { class: "video-box" }, preview, badge, overlay),
      h("div", { class: "row" }, title, goLive, end),
      h("div", { class: "row" },
        h("span", { class: "stat" }, "Viewers: ", viewers),
        h("span", { class: "stat" }, "Earnings: ", earnings, " coins")),
      share),
    h("div", { class: "side" }, chatSlot,
      h("section", { class: "panel" }, h("h2", {}, "Gifts received"), feed))));

  async function startCamera() {
    overlay.hidden = false;
    overlay.replaceChildren("Starting the camera…");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new AppError("insecure_page",
        "This browser gives no camera to this page: open it as http://localhost:8080 or over HTTPS.");
    }
    // 720p, so that the three simulcast layers (whip.js) are 180, 360 and 720 lines.
    camera = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: true });
    preview.srcObject = camera;
    overlay.hidden = true;
    goLive.disabled = false;
  }

  async function tryCamera() {
    try {
      await startCamera();
    } catch (error) {
      showError(error);
      const retry = h("button", { type: "button", id: "camera-retry" }, "Try again");
      action(retry, startCamera);
      overlay.replaceChildren(h("div", {}, h("p", { id: "camera-error" }, "No camera preview. "), retry));
    }
  }

  async function refreshEarnings() {
    try {
      earnings.textContent = String((await api("GET", "/api/v1/wallet")).earnings);
    } catch (error) {
      showError(error);
    }
  }

  function giftArrived(event) {
    if (!room || event.roomId !== room.id) return;
    if (feed.querySelector(".muted")) feed.replaceChildren();
    feed.prepend(h("li", { class: "gift-line" },
      h("span", {}, `${displayName(event.from)} sent ${event.gift.name}${event.quantity > 1 ? ` ×${event.quantity}` : ""}`),
      h("span", { class: "muted" }, `${event.coins} coins`)));
    chat.addGift(event);
    refreshEarnings();
  }

  function streamEnded(reason) {
    const why = reason === "publisher_gone" ? "the connection to the server was lost"
      : reason === "ended_by_owner" || !reason ? "you ended it" : reason.replace(/_/g, " ");
    showInfo(`Your stream has ended (${why}).`);
    finish();
  }

  async function finish() {
    for (const stop of stopListening) stop();
    stopListening = [];
    const publishing = whip;
    whip = null;
    if (publishing) await publishing.stop();
    badge.textContent = "Ended";
    badge.className = "badge idle";
    end.hidden = true;
    goLive.hidden = false;
    goLive.disabled = !camera;
    title.disabled = false;
    room = null;
  }

  action(goLive, async () => {
    if (!camera) throw new AppError("no_camera", "Start the camera first.");
    room = await api("POST", "/api/v1/rooms", { type: "live", title: title.value.trim(), public: true });
    chat = chatPanel(room.id);
    chatSlot.replaceChildren(chat.element);
    countViewers = audienceCounter(room.id, viewers);
    const roomId = room.id;
    stopListening = await Promise.all([
      listen("stream:viewers", (e) => e.roomId === roomId && refreshViewers()),
      listen("chat:message", (m) => m.roomId === roomId && chat.add(m)),
      listen("gift:received", giftArrived),
      listen("stream:ended", (e) => e.roomId === roomId && room && streamEnded(e.reason)),
    ]);
    try {
      await request("stream:join", { roomId });
      whip = await publish(roomId, camera);
    } catch (error) {
      await api("POST", `/api/v1/rooms/${encodeURIComponent(roomId)}/end`).catch(() => {});
      await finish();
      throw error;
    }
    expose("publishing", whip);
    whip.pc.addEventListener("connectionstatechange", () => {
      if (whip && whip.pc.connectionState === "failed") {
        showError(new AppError("media_failed", "The video connection to the server failed."));
      }
    });
    badge.textContent = "LIVE";
    badge.className = "badge";
    badge.dataset.roomId = roomId;
    goLive.hidden = true;
    end.hidden = false;
    title.disabled = true;
    viewers.textContent = "0";
    share.replaceChildren("Viewers find you under Watch, or at ",
      h("a", { href: `#/watch/${encodeURIComponent(roomId)}`, id: "watch-link" },
        `${location.origin}/#/watch/${roomId}`));
    refreshEarnings();
    countViewers();
  });

  action(end, async () => {
    const roomId = room && room.id;
    await finish();
    if (roomId) {
      await api("POST", `/api/v1/rooms/${encodeURIComponent(roomId)}/end`);
      showInfo("Your stream has ended.");
    }
  });

  tryCamera();
  refreshEarnings();

  return {
    async leave() {
      const roomId = room && room.id;
      await finish();
      if (roomId) await api("POST", `/api/v1/rooms/${encodeURIComponent(roomId)}/end`).catch(() => {});
      if (camera) for (const track of camera.getTracks()) track.stop();
      camera = null;
    },
  };
}
