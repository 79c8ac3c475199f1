// A plain socket.io live room for bench.signaling to drive beside airwave: the same
// shape (auth {token} on connect, stream:join {roomId} ack, chat:send {roomId, text,
// clientId} ack {id, seq, createdAt} and chat:message to the room), no database, no
// token check beyond "present". Also answers POST /api/v1/dev/token and POST
// /api/v1/rooms so the bench needs no special case.
//
//   node server.js --port 8090 [--host 127.0.0.1]
"use strict";
const http = require("http");
const crypto = require("crypto");
const { Server } = require("socket.io");

const argv = process.argv.slice(2);
const option = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 && argv[i + 1] ? argv[i + 1] : fallback;
};
const port = Number(option("--port", "8090"));
const host = option("--host", "127.0.0.1");

function readJson(req) {
  return new Promise((resolve) => {
    let body = "";
    req.on("data", (chunk) => { if (body.length < 65536) body += chunk; });
    req.on("end", () => { try { resolve(JSON.parse(body || "{}")); } catch { resolve({}); } });
  });
}

const rooms = new Map(); // roomId -> {seq}
const httpServer = http.createServer(async (req, res) => {
  const reply = (status, value) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(value));
  };
  if (req.method === "POST" && req.url === "/api/v1/dev/token") {
    const body = await readJson(req);
    const userId = crypto.randomUUID();
    return reply(200, { token: `ref.${userId}.${String(body.name || "")}`, userId });
  }
  if (req.method === "POST" && req.url === "/api/v1/rooms") {
    await readJson(req);
    const id = crypto.randomUUID();
    rooms.set(id, { seq: 0 });
    return reply(201, { id, type: "live", status: "idle" });
  }
  reply(404, { status: 404, code: "not_found", message: "not found" });
});

const io = new Server(httpServer, { transports: ["polling", "websocket"], maxHttpBufferSize: 256 * 1024 });

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (typeof token !== "string" || !token.startsWith("ref.")) {
    const err = new Error("a token is required");
    err.data = { code: "unauthorized" };
    return next(err);
  }
  socket.data.userId = token.split(".")[1];
  next();
});

io.on("connection", (socket) => {
  socket.join(`user:${socket.data.userId}`);
  socket.on("stream:join", (data, ack) => {
    const roomId = data && data.roomId;
    const room = rooms.get(roomId);
    if (typeof ack !== "function") return;
    if (!room) return ack({ error: { code: "not_found", message: "no such room" } });
    socket.join(`room:${roomId}`);
    ack({ roomId, status: "idle", streamId: null, viewerCount: io.sockets.adapter.rooms.get(`room:${roomId}`).size });
  });
  socket.on("chat:send", (data, ack) => {
    const roomId = data && data.roomId;
    const room = rooms.get(roomId);
    if (typeof ack !== "function") return;
    if (!room || typeof data.text !== "string" || data.text.length > 2000) {
      return ack({ error: { code: "bad_request", message: "chat:send takes {roomId, text, clientId}" } });
    }
    room.seq += 1;
    const message = {
      id: crypto.randomUUID(), seq: room.seq, roomId, userId: socket.data.userId,
      text: data.text, createdAt: Date.now() / 1000, clientId: data.clientId ?? null,
    };
    io.to(`room:${roomId}`).emit("chat:message", message);
    ack({ id: message.id, seq: message.seq, createdAt: message.createdAt });
  });
});

httpServer.listen(port, host, () => console.log(`node reference room on http://${host}:${port}`));
