// Call: placeholder until the calls feature is wired.
import { h } from "./ui.js";

export async function mount(root) {
  root.replaceChildren(h("section", { class: "panel" }, h("h1", {}, "Call"), h("p", {}, "Coming soon.")));
  return { leave() {} };
}
