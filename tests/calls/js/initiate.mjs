// Connect with the official socket.io-client, place a call, print the ack as JSON.
// Usage: node initiate.mjs <url> <token> <callee>
import { io } from "socket.io-client";

const [url, token, callee] = process.argv.slice(2);
const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false, timeout: 5000 });
const giveUp = setTimeout(() => {
  console.log(JSON.stringify({ clientError: "no ack in 10 s" }));
  process.exit(2);
}, 10000);

socket.on("connect_error", (err) => {
  console.log(JSON.stringify({ clientError: err.message, data: err.data ?? null }));
  process.exit(1);
});

socket.on("connect", () => {
  socket.timeout(5000).emit("call:initiate", { to: callee, media: "audio" }, (err, ack) => {
    clearTimeout(giveUp);
    console.log(JSON.stringify(err ? { clientError: String(err) } : { connected: true, sid: socket.id, ack }));
    socket.disconnect();
    process.exit(err ? 1 : 0);
  });
});
