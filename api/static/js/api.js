// REST with a Bearer token; errors in airwave's one shape {status, code, message, requestId}.
import { AppError } from "./errors.js";
import { session } from "./session.js";

export async function errorFrom(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (body && body.code) return new AppError(body.code, body.message || body.code, response.status);
  return new AppError(`http_${response.status}`, `The server answered ${response.status} ${response.statusText}`,
    response.status);
}

export async function api(method, path, body) {
  const headers = {};
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new AppError("network", "The server cannot be reached.");
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

/** A unique key (idempotency keys, chat client ids); crypto.randomUUID needs a secure context. */
export function uniqueId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Demo user ids look like demo-<name>-<hex>; show the name part. */
export function displayName(userId) {
  if (userId === session.userId) return session.name || "you";
  const match = /^demo-(.+)-[0-9a-f]{6}$/.exec(userId || "");
  return match ? match[1] : userId;
}
