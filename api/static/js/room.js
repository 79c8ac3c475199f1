// What the Go live and Watch pages share: the chat panel, gift lines, the audience count.
import { api, displayName, uniqueId } from "./api.js";
import { session } from "./session.js";
import { request } from "./socket.js";
import { h, showError } from "./ui.js";

/** Chat of a room: history from REST, live lines from chat:message, sending with chat:send. */
export function chatPanel(roomId) {
  const log = h("div", { class: "chat-log", id: "chat-log", "aria-live": "polite" });
  const input = h("input", { type: "text", id: "chat-input", placeholder: "Say something", maxlength: "500" });
  const send = h("button", { type: "submit", id: "chat-send" }, "Send");
  const form = h("form", { class: "chat-form" }, input, send);
  const seen = new Set();

  function add(message) {
    if (message.id && seen.has(message.id)) return;
    if (message.id) seen.add(message.id);
    append(h("div", { class: "chat-line", dataset: { user: message.userId } },
      h("span", { class: "who" }, displayName(message.userId)), h("span", { class: "text" }, message.text)));
  }

  function addGift(event) {
    const what = `${event.gift.name}${event.quantity > 1 ? ` ×${event.quantity}` : ""}`;
    append(h("div", { class: "chat-line gift" },
      `Gift: ${displayName(event.from)} sent ${what} to ${displayName(event.to)} (${event.coins} coins)`));
  }

  function append(line) {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(line);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    send.disabled = true;
    try {
      const ack = await request("chat:send", { roomId, text, clientId: uniqueId() });
      input.value = "";
      add({ id: ack.id, userId: session.userId, text });
    } catch (error) {
      showError(error);
    } finally {
      send.disabled = false;
      input.focus();
    }
  });

  async function loadHistory() {
    try {
      const { messages } = await api("GET", `/api/v1/rooms/${encodeURIComponent(roomId)}/messages?limit=50`);
      for (const message of messages) add(message);
    } catch (error) {
      showError(error);
    }
  }

  const element = h("section", { class: "panel" }, h("h2", {}, "Chat"), log, form);
  return { element, add, addGift, loadHistory };
}

/** Viewers of a live room, not counting its broadcaster: signed-in viewers plus anonymous WHEP ones. */
export async function audienceCount(roomId) {
  const { participants, anonymousViewers } = await api("GET",
    `/api/v1/rooms/${encodeURIComponent(roomId)}/participants`);
  return participants.filter((p) => p.role === "viewer").length + (anonymousViewers || 0);
}

/** Keep an element showing the audience count; refreshed when stream:viewers says it changed. */
export function audienceCounter(roomId, element) {
  let running = false;
  let again = false;
  return async function refresh() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        element.textContent = String(await audienceCount(roomId));
      } while (again);
    } catch (error) {
      showError(error);
    } finally {
      running = false;
    }
  };
}
