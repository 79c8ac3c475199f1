// The app shell: demo sign-in, then one page at a time by the URL hash (#/live, #/watch, #/watch/<room>, #/call).
import { inWords } from "./errors.js";
import { session, signIn, signOut } from "./session.js";
import { disconnect } from "./socket.js";
import { clearNotice, h, showError } from "./ui.js";

const PAGES = {
  live: () => import("./live.js"),
  watch: () => import("./watch.js"),
  call: () => import("./call.js"),
};

const root = document.getElementById("page");
let current = null;
let generation = 0;
let callsHeard = false;  // call:incoming is listened to from any page once signed in

function renderMe() {
  const me = document.getElementById("me");
  me.replaceChildren();
  if (!session.token) return;
  me.append(
    h("span", { id: "me-name" }, `Signed in as ${session.name}`),
    h("button", { class: "quiet", type: "button", onclick: () => { leaveCurrent(); disconnect(); signOut(); callsHeard = false; route(); } },
      "Sign out"),
  );
}

function signInPage(then) {
  const input = h("input", { type: "text", id: "signin-name", placeholder: "Your name", maxlength: "40",
    required: true, autofocus: true });
  const button = h("button", { type: "submit", id: "signin-button" }, "Sign in");
  const form = h("form", {}, input, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      await signIn(input.value);
      clearNotice();
      renderMe();
      then();
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  });
  root.replaceChildren(h("section", { class: "panel signin" },
    h("h1", {}, "Sign in to the airwave demo"),
    h("p", { class: "muted" }, "Pick any name: the server's development mode gives you a demo account with coins."),
    form));
}

function homePage() {
  root.replaceChildren(h("section", { class: "panel" },
    h("h1", {}, `Hello, ${session.name}`),
    h("p", {}, "Broadcast your camera, watch others, chat, send gifts, or call someone who is online."),
    h("div", { class: "row" },
      h("a", { href: "#/live" }, h("button", { class: "live", type: "button" }, "Go live")),
      h("a", { href: "#/watch" }, h("button", { type: "button" }, "Watch")),
      h("a", { href: "#/call" }, h("button", { class: "quiet", type: "button" }, "Call")))));
}

function leaveCurrent() {
  const page = current;
  current = null;
  if (page && page.leave) Promise.resolve(page.leave()).catch((error) => console.warn(error));
}

async function route() {
  leaveCurrent();
  const mine = ++generation;
  const [name, ...params] = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("current", link.dataset.nav === name);
  }
  root.replaceChildren();
  if (!session.token) {
    signInPage(route);
    return;
  }
  renderMe();
  if (!callsHeard) {
    callsHeard = true;
    import("./call.js").then((calls) => calls.listenForCalls()).catch((error) => {
      callsHeard = false;
      showError(error);
    });
  }
  const load = PAGES[name];
  if (!load) {
    homePage();
    return;
  }
  try {
    const page = await load();
    const mounted = await page.mount(root, params.map(decodeURIComponent));
    if (mine !== generation) {  // the person moved on while this page was starting
      if (mounted && mounted.leave) mounted.leave();
      return;
    }
    current = mounted;
  } catch (error) {
    if (mine !== generation) return;
    root.replaceChildren(h("section", { class: "panel" }, h("h1", {}, "This page could not start"),
      h("p", { id: "page-error" }, inWords(error))));
  }
}

document.getElementById("notice-close").addEventListener("click", clearNotice);
window.addEventListener("hashchange", () => { clearNotice(); route(); });
window.addEventListener("unhandledrejection", (event) => showError(event.reason));
window.airwaveStarted = true;
route();
