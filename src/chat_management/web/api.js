// How a client uses this API: bearer token on every call, problem details on every refusal, the direct
// PUT to the presigned URL with upload progress, and the socket with reconnect.

/** A refusal, from the problem details the server answers with (RFC 9457: detail, code, status). */
export class ApiError extends Error {
  constructor(status, code, detail, retryAfter = null, index = null) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code || "";
    this.detail = detail || "";
    this.retryAfter = retryAfter;
    this.index = index; // an album's send names the image it refused
  }
}

/** One line a person can act on: the server's own words, its code and the status. */
export function describeError(error) {
  if (!(error instanceof ApiError)) return String(error?.message || error);
  const tag = [error.code, error.status ? String(error.status) : ""].filter(Boolean).join(", ");
  let text = error.detail || error.message;
  // the hint from Retry-After, unless the server's own words already say when (no "retry in 60 s Try again…")
  if (error.retryAfter && !/\bretry in \d+ ?s\b/i.test(text)) {
    text += `${/[.!?]$/.test(text) ? "" : "."} Try again in ${error.retryAfter} s.`;
  }
  return tag ? `${text} (${tag})` : text;
}

function retryAfterOf(headerValue) {
  const seconds = Number.parseInt(headerValue || "", 10);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null;
}

async function errorFrom(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: the status alone
  }
  const detail = body.detail || body.title || response.statusText || `HTTP ${response.status}`;
  const index = Number.isInteger(body.index) ? body.index : null;
  return new ApiError(response.status, body.code, detail, retryAfterOf(response.headers.get("Retry-After")), index);
}

/** A small client of the REST API for one token. */
export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: {
          Authorization: `Bearer ${this.token}`,
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "network_error", "The server could not be reached.");
    }
    if (!response.ok) throw await errorFrom(response);
    return response.status === 204 ? null : response.json();
  }

  conversations(before) {
    const query = new URLSearchParams({ limit: "50", ...(before ? { before } : {}) });
    return this.request("GET", `/conversations?${query}`);
  }
  conversation(id) {
    return this.request("GET", `/conversations/${encodeURIComponent(id)}`);
  }
  createConversation(participantIds, name) {
    return this.request("POST", "/conversations", { participantIds, ...(name ? { name } : {}) });
  }
  messages(id, before, limit = 30) {
    const query = new URLSearchParams({ limit: String(limit), ...(before ? { before } : {}) });
    return this.request("GET", `/conversations/${encodeURIComponent(id)}/messages?${query}`);
  }
  /** The conversation's images, newest first, one item per image of an album (`nextCursor` as `before`). */
  images(id, before, limit = 30) {
    const query = new URLSearchParams({ limit: String(limit), ...(before ? { before } : {}) });
    return this.request("GET", `/conversations/${encodeURIComponent(id)}/images?${query}`);
  }
  send(id, body) {
    return this.request("POST", `/conversations/${encodeURIComponent(id)}/messages`, body);
  }
  forward(id, messageId, targetId, clientMessageId) {
    const path = `/conversations/${encodeURIComponent(id)}/messages/${encodeURIComponent(messageId)}/forward`;
    return this.request("POST", path, { conversationId: targetId, clientMessageId });
  }
  markRead(id, messageId) {
    const path = `/conversations/${encodeURIComponent(id)}/messages/${encodeURIComponent(messageId)}/read`;
    return this.request("POST", path);
  }
  /** Unsend: 204; the message stays as a tombstone. */
  deleteMessage(id, messageId) {
    return this.request("DELETE", `/conversations/${encodeURIComponent(id)}/messages/${encodeURIComponent(messageId)}`);
  }
  /** Edit the text or caption (`content`) and/or `alt_text`; answers with the message (`editedAt` set). */
  editMessage(id, messageId, changes) {
    return this.request("PATCH", `/conversations/${encodeURIComponent(id)}/messages/${encodeURIComponent(messageId)}`, changes);
  }
  uploadUrl(id, file) {
    return this.request("POST", `/conversations/${encodeURIComponent(id)}/images/upload_url`, {
      content_type: file.type || "application/octet-stream",
      filename: file.name || undefined,
      size_bytes: file.size,
    });
  }
}

/** The direct PUT to the presigned URL; XMLHttpRequest because fetch reports no upload progress. */
export function putFile(url, file, contentType, onProgress) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.open("PUT", url);
    xhr.setRequestHeader("Content-Type", contentType);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve();
        return;
      }
      // S3 answers XML (<Code>, <Message>), the local store problem details
      const text = xhr.responseText || "";
      let code = /<Code>([^<]*)<\/Code>/.exec(text)?.[1] || "";
      let detail = /<Message>([^<]*)<\/Message>/.exec(text)?.[1] || "";
      try {
        const body = JSON.parse(text);
        code = body.code || code;
        detail = body.detail || detail;
      } catch {
        // XML or empty
      }
      reject(new ApiError(xhr.status, code, detail || `The storage refused the upload (HTTP ${xhr.status}).`,
        retryAfterOf(xhr.getResponseHeader("Retry-After"))));
    };
    xhr.onerror = () => reject(new ApiError(0, "network_error", "The upload did not reach the storage."));
    xhr.onabort = () => reject(new ApiError(0, "aborted", "Upload cancelled."));
    xhr.send(file);
  });
  return { done, abort: () => xhr.abort() };
}

export const CLOSE_UNAUTHORIZED = 4401;

/**
 * The real-time socket. Reconnects with full-jitter backoff; every `session.ready` after the first is a
 * reconnect, after which the app backfills with the list endpoints (events are at most once). So does a
 * `session.resync` (`onResync`): the socket stayed open, but the server lost events meant for it.
 */
export function connectSocket(token, { onEvent, onReady, onResync, onStatus, onUnauthorized }) {
  let socket = null;
  let stopped = false;
  let attempt = 0;
  let pinger = null;
  let retry = null;

  function open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws?access_token=${encodeURIComponent(token)}`);
    onStatus("connecting");
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event.type === "session.ready") {
        attempt = 0;
        onStatus("online");
        clearInterval(pinger);
        const every = Math.max(5, Math.min(25, (event.heartbeatSeconds || 25) - 1)) * 1000;
        pinger = setInterval(() => socket?.readyState === 1 && socket.send('{"type":"ping"}'), every);
        onReady(event);
      } else if (event.type === "session.resync") {
        onResync();
      } else if (event.type !== "pong") {
        onEvent(event);
      }
    };
    socket.onclose = (close) => {
      clearInterval(pinger);
      if (stopped) return;
      if (close.code === CLOSE_UNAUTHORIZED) {
        onStatus("offline");
        onUnauthorized();
        return;
      }
      onStatus("offline");
      const delay = Math.random() * Math.min(10000, 500 * 2 ** attempt);
      attempt += 1;
      retry = setTimeout(open, delay);
    };
  }

  open();
  return {
    close() {
      stopped = true;
      clearTimeout(retry);
      clearInterval(pinger);
      socket?.close();
    },
  };
}
