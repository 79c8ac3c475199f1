// The signed-in demo user: a token from POST /api/v1/dev/token, kept per browser tab.
import { AppError } from "./errors.js";

const KEY = "airwave.session";

export const session = { token: "", userId: "", name: "" };

function restore() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (saved && saved.token && saved.expiresAt > Date.now() / 1000 + 60) Object.assign(session, saved);
  } catch { /* nothing saved */ }
}
restore();

function expiry(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp || 0;
  } catch {
    return 0;
  }
}

export async function signIn(name) {
  let response;
  try {
    response = await fetch("/api/v1/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name }),
    });
  } catch {
    throw new AppError("network", "The server cannot be reached.");
  }
  if (response.status === 404) {
    throw new AppError("no_demo_sign_in",
      "Demo sign-in is off on this server (AIRWAVE_ENV=production): your app must provide tokens.");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new AppError(body.code || "sign_in_failed", body.message || "Sign-in failed.");
  Object.assign(session, { token: body.token, userId: body.userId, name: body.name, expiresAt: expiry(body.token) });
  sessionStorage.setItem(KEY, JSON.stringify(session));
  return session;
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  Object.assign(session, { token: "", userId: "", name: "" });
}
