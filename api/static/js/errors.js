// Errors the person can read: every failure ends up as one sentence on the page.

export class AppError extends Error {
  constructor(code, message, status = 0) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const WORDS = {
  insufficient_funds: "Not enough coins for this gift.",
  room_ended: "This stream has ended.",
  room_not_live: "This stream is not live (it may have ended).",
  room_not_found: "There is no such room (it may have ended).",
  room_full: "This room is full.",
  banned: "You were removed from this room and cannot rejoin yet.",
  room_has_publisher: "Someone is already live in this room.",
  token_expired: "Your sign-in has expired: sign in again.",
  missing_token: "Please sign in first.",
  rate_limited: "Slow down a little: too many messages.",
  cannot_gift_self: "You cannot send a gift to yourself.",
  at_capacity: "The server is at capacity; try again in a moment.",
  busy: "They are already in a call.",
  network: "The server cannot be reached. Is airwave still running?",
};

/** One sentence for any error: our AppError, a getUserMedia DOMException, or anything else. */
export function inWords(error) {
  if (error instanceof AppError) return WORDS[error.code] || error.message || error.code;
  if (error && error.name === "NotAllowedError") {
    return "Camera or microphone access was refused. Allow it in the browser's address bar, then try again.";
  }
  if (error && error.name === "NotFoundError") return "No camera or microphone was found on this device.";
  if (error && error.name === "NotReadableError") {
    return "The camera or microphone is in use by another application.";
  }
  if (error && error.message) return error.message;
  return String(error);
}
