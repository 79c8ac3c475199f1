// One Socket.IO connection per signed-in tab, authenticated with {auth: {token, caps}}.
// caps ["batch"]: in a large room the server may coalesce chat messages and viewer counts into
// one `batch` event [{event, data}, ...] per short tick; it is unpacked here, in order, to the
// listeners of each event, so the rest of the app never sees it.
// request() wraps an acknowledged event: resolves with the ack, throws AppError for {error: {code, message}}.
import { AppError } from "./errors.js";
import { session } from "./session.js";

const ACK_TIMEOUT_MS = 8000;
let socket = null;
let connecting = null;

async function loadClient() {
  try {
    return await import("/vendor/socket.io.esm.min.js");
  } catch {
    throw new AppError("webapp_not_installed",
      "The Socket.IO client is missing on the server: run `npm ci` in web/ (make run does it), then reload.");
  }
}

/** The connected socket (connecting on first use). */
export async function connection() {
  if (socket) return socket;  // connected, or reconnecting by itself (keeping its listeners)
  if (connecting) return connecting;
  connecting = (async () => {
    const { io } = await loadClient();
    const s = io({ auth: { token: session.token, caps: ["batch"] }, transports: ["websocket"],
      reconnectionDelayMax: 3000 });
    s.on("batch", (items) => {
      if (!Array.isArray(items)) return;
      for (const item of items) {
        if (!item || typeof item.event !== "string") continue;
        for (const handler of s.listeners(item.event)) handler(item.data);
      }
    });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new AppError("network", "The server cannot be reached.")), 8000);
      s.once("connect", () => { clearTimeout(timer); resolve(); });
      s.once("connect_error", (err) => {
        clearTimeout(timer);
        s.close();
        const code = (err && err.data && err.data.code) || "network";
        reject(new AppError(code, err && err.message ? `Cannot connect: ${err.message}` : "Cannot connect."));
      });
    });
    socket = s;
    return s;
  })();
  try {
    return await connecting;
  } finally {
    connecting = null;
  }
}

export async function request(event, data) {
  const s = await connection();
  let reply;
  try {
    reply = await s.timeout(ACK_TIMEOUT_MS).emitWithAck(event, data);
  } catch {
    throw new AppError("timeout", `The server did not answer ${event} in time.`);
  }
  if (reply && reply.error) throw new AppError(reply.error.code, reply.error.message);
  return reply;
}

/** Listen to a server event until the returned function is called. */
export async function listen(event, handler) {
  const s = await connection();
  s.on(event, handler);
  return () => s.off(event, handler);
}

export function disconnect() {
  if (socket) socket.close();
  socket = null;
}
