// Small DOM helpers and the notice bar: errors are shown in words, never as a blank page.
import { inWords } from "./errors.js";

/** h("div", {class: "x", onclick: f}, "text", child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function showError(error) {
  show(inWords(error), "error");
  if (error && !(error.name === "NotAllowedError")) console.warn(error);
}

export function showInfo(text) {
  show(text, "info");
}

function show(text, kind) {
  const notice = document.getElementById("notice");
  document.getElementById("notice-text").textContent = text;
  notice.className = kind === "info" ? "notice info" : "notice";
  notice.dataset.kind = kind;
  notice.hidden = false;
}

export function clearNotice() {
  document.getElementById("notice").hidden = true;
}

/** Run an async action from a button: disable it meanwhile, show any failure in words. */
export function action(button, run) {
  button.addEventListener("click", async (event) => {
    event.preventDefault();
    if (button.disabled) return;
    button.disabled = true;
    try {
      await run();
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

export function formatSeconds(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** Put a live object on window.airwave for the developer console (and the browser tests):
 *  e.g. ``await airwave.watching.pc.getStats()``. */
export function expose(name, value) {
  window.airwave = Object.assign(window.airwave || {}, { [name]: value });
}
