// Watch: the live rooms (most viewers first); one room played over WHEP with its chat,
// the wallet and gift buttons, and the room's leaderboard.
import { api, displayName, uniqueId } from "./api.js";
import { AppError } from "./errors.js";
import { audienceCounter, chatPanel } from "./room.js";
import { session } from "./session.js";
import { listen, request } from "./socket.js";
import { action, expose, h, showError } from "./ui.js";
import { receivedVideo, watch } from "./whip.js";

const LIST_REFRESH_MS = 3000;

export async function mount(root, params) {
  return params[0] ? watchRoom(root, params[0]) : listRooms(root);
}

async function listRooms(root) {
  const grid = h("div", { class: "rooms", id: "room-list" });
  root.replaceChildren(h("section", {}, h("h1", {}, "Live now"), grid));
  let timer = null;

  async function refresh() {
    try {
      const { rooms } = await api("GET", "/api/v1/rooms?status=live&limit=50");
      if (!rooms.length) {
        grid.replaceChildren(h("p", { class: "muted", id: "no-rooms" }, "Nobody is live right now. ",
          h("a", { href: "#/live" }, "Go live yourself.")));
        return;
      }
      grid.replaceChildren(...rooms.map((room) => h("a", {
        class: "panel room-card", href: `#/watch/${encodeURIComponent(room.id)}`, dataset: { roomId: room.id },
      },
      h("span", { class: "badge" }, "LIVE"),
      h("div", { class: "title" }, room.title || room.id),
      h("div", { class: "muted" }, `${displayName(room.ownerId)} · ${room.viewerCount} watching`))));
    } catch (error) {
      showError(error);
    }
  }

  await refresh();
  timer = setInterval(refresh, LIST_REFRESH_MS);
  return { leave() { clearInterval(timer); } };
}

async function watchRoom(root, roomId) {
  let room;
  try {
    room = await api("GET", `/api/v1/rooms/${encodeURIComponent(roomId)}`);
  } catch (error) {
    if (error.status === 404) throw new AppError("room_not_found", "There is no such room (it may have ended).");
    throw error;
  }
  let whep = null;
  let ended = false;
  let stopListening = [];
  const video = h("video", { id: "remote", autoplay: true, muted: true, playsinline: true });
  video.muted = true;
  const overlay = h("div", { class: "overlay", id: "watch-overlay" }, "Connecting…");
  const badge = h("span", { class: "badge idle", id: "watch-badge" }, "…");
  const unmute = h("button", { type: "button", class: "quiet", id: "unmute" }, "Unmute");
  unmute.addEventListener("click", () => { video.muted = !video.muted; unmute.textContent = video.muted ? "Unmute" : "Mute"; });
  const viewers = h("b", { id: "viewer-count" }, String(room.viewerCount));
  const coins = h("b", { id: "coins" }, "…");
  const gifts = h("div", { class: "gift-buttons", id: "gift-buttons" });
  const board = h("ol", { class: "list", id: "leaderboard" });
  const chat = chatPanel(roomId);
  const countViewers = audienceCounter(roomId, viewers);
  const stats = h("span", { class: "muted", id: "video-stats" });
  // The layer this viewer receives (with simulcast the server picks it for our link): lines and frame rate.
  const layer = h("span", { class: "badge idle layer", id: "layer-badge", hidden: true });
  // The server paused our video: not even its lowest layer fits our link (sfu:layer_changed).
  const paused = h("div", { class: "overlay", id: "video-paused", hidden: true },
    "Video paused: your connection is too slow for this stream right now. The sound goes on.");
  const statsTimer = setInterval(async () => {
    if (!whep) return;
    const received = await receivedVideo(whep.pc).catch(() => null);
    if (!received) return;
    stats.textContent = video.videoWidth
      ? `${video.videoWidth}×${video.videoHeight} · ${received.framesDecoded} frames decoded` : "";
    layer.hidden = !received.frameHeight;
    layer.textContent = `${received.frameHeight}p · ${Math.round(received.framesPerSecond)} fps`;
    Object.assign(layer.dataset, { height: received.frameHeight, fps: received.framesPerSecond });
  }, 1000);

  root.replaceChildren(h("div", { class: "stage", id: "watch-page" },
    h("div", {},
      h("div", { class: "video-box" }, video, badge, layer, paused, overlay),
      h("div", { class: "row" },
        h("h1", { id: "room-title" }, room.title || room.id),
        h("span", { class: "muted" }, `by ${displayName(room.ownerId)}`)),
      h("div", { class: "row" }, h("span", { class: "stat" }, "Viewers: ", viewers), unmute, stats,
        h("a", { href: "#/watch" }, "All live rooms"))),
    h("div", { class: "side" }, chat.element,
      h("section", { class: "panel" }, h("h2", {}, "Send a gift"),
        h("p", {}, "Your coins: ", coins), gifts),
      h("section", { class: "panel" }, h("h2", {}, "Top gifters"), board))));

  function showEnded(text) {
    ended = true;
    badge.textContent = "Ended";
    badge.className = "badge idle";
    overlay.hidden = false;
    overlay.replaceChildren(h("p", { id: "ended" }, text));
    for (const button of gifts.querySelectorAll("button")) button.disabled = true;
    const watching = whep;
    whep = null;
    if (watching) watching.pc.close();  // the server has closed the session already
  }

  async function play() {
    if (ended || whep) return;
    overlay.hidden = false;
    overlay.replaceChildren("Connecting…");
    try {
      whep = await watch(roomId, (stream) => { video.srcObject = stream; });
    } catch (error) {
      if (error.code === "room_not_live") {
        overlay.replaceChildren("Waiting for the broadcaster to start…");
        return;  // stream:started plays it
      }
      throw error;
    }
    expose("watching", whep);
    whep.pc.addEventListener("connectionstatechange", () => {
      if (whep && whep.pc.connectionState === "failed") {
        overlay.hidden = false;
        overlay.replaceChildren("The video connection was lost.");
      }
    });
    badge.textContent = "LIVE";
    badge.className = "badge";
    video.addEventListener("playing", () => { overlay.hidden = true; }, { once: true });
  }

  async function refreshWallet() {
    try {
      coins.textContent = String((await api("GET", "/api/v1/wallet")).coins);
    } catch (error) {
      showError(error);
    }
  }

  async function refreshBoard() {
    try {
      const { entries } = await api("GET", `/api/v1/rooms/${encodeURIComponent(roomId)}/leaderboard?limit=10`);
      board.replaceChildren(...(entries.length ? entries.map((entry) => h("li", {},
        h("span", {}, displayName(entry.userId)), h("span", { class: "muted" }, `${entry.coins} coins`)))
        : [h("li", { class: "muted" }, "No gifts yet: be the first.")]));
    } catch (error) {
      showError(error);
    }
  }

  async function loadGifts() {
    const catalog = await api("GET", "/api/v1/gifts");
    const list = Array.isArray(catalog) ? catalog : catalog.gifts || [];
    gifts.replaceChildren(...list.map((gift) => action(
      h("button", { type: "button", dataset: { gift: gift.id }, disabled: room.ownerId === session.userId },
        `${gift.name} · ${gift.coins}`),
      async () => {
        const sent = await api("POST", "/api/v1/gifts/send", {
          giftId: gift.id, to: room.ownerId, roomId, quantity: 1, idempotencyKey: uniqueId(),
        });
        coins.textContent = String(sent.balance);
      })));
  }

  stopListening = await Promise.all([
    listen("stream:viewers", (e) => e.roomId === roomId && countViewers()),
    listen("chat:message", (m) => m.roomId === roomId && chat.add(m)),
    listen("gift:received", (e) => {
      if (e.roomId !== roomId) return;
      chat.addGift(e);
      refreshBoard();
    }),
    listen("stream:started", (e) => { if (e.roomId === roomId && !whep) play().catch(showError); }),
    listen("sfu:layer_changed", (e) => {
      if (whep && whep.location && whep.location.endsWith(`/${e.sessionId}`)) paused.hidden = !e.paused;
    }),
    listen("stream:ended", (e) => e.roomId === roomId && showEnded("This stream has ended.")),
    listen("stream:kicked", (e) => e.roomId === roomId && showEnded("You were removed from this stream.")),
  ]);

  if (room.status === "ended") {
    showEnded("This stream has ended.");
  } else {
    try {
      await request("stream:join", { roomId });
    } catch (error) {
      if (error.code === "room_ended") showEnded("This stream has ended.");
      else showError(error);
    }
  }
  chat.loadHistory();
  refreshWallet();
  refreshBoard();
  loadGifts().catch(showError);
  if (!ended) play().catch((error) => {
    showError(error);
    overlay.replaceChildren(h("p", {}, "No video: see the message above."));
  });
  countViewers();

  return {
    async leave() {
      clearInterval(statsTimer);
      for (const stop of stopListening) stop();
      if (!ended) request("stream:leave", { roomId }).catch(() => {});
      const watching = whep;
      whep = null;
      if (watching) await watching.stop();
    },
  };
}
