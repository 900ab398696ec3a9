// The web client: a reference for how a chat client uses this API. Preact + htm, vendored; no build step.
import { h, render } from "./vendor/preact.mjs";
import { useCallback, useEffect, useMemo, useRef, useState } from "./vendor/hooks.mjs";
import htm from "./vendor/htm.mjs";
import { Api, ApiError, connectSocket, describeError, putFile } from "./api.js";
import { drawBlurhash, isValidBlurhash } from "./blurhash.js";
import { Viewer, imagesOf } from "./viewer.js";

const html = htm.bind(h);
const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content || "";
const COOKIE_NAME = meta("chat-cookie-name") || "access_token";
const DEV_LOGIN = meta("chat-dev-login") === "on";
const SESSION_KEY = "chat-management.session"; // sessionStorage: each window may be another user
const MAX_IMAGES_PER_MESSAGE = 10; // the server's limit (400 too_many_images past it)

// --- session: the token, and the image proxy's cookie (an <img> cannot send a header) ---------------
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

function setImageCookie(token) {
  const claims = claimsOf(token);
  const maxAge = claims?.exp ? Math.max(0, claims.exp - Math.floor(Date.now() / 1000)) : 3600;
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${COOKIE_NAME}=${token}; Path=/images; Max-Age=${maxAge}; SameSite=Strict${secure}`;
}

function clearImageCookie() {
  document.cookie = `${COOKIE_NAME}=; Path=/images; Max-Age=0; SameSite=Strict`;
}

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    const claims = session && claimsOf(session.token);
    if (!claims?.sub || (claims.exp && claims.exp * 1000 < Date.now())) return null;
    return session;
  } catch {
    return null;
  }
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12)); // randomUUID needs a secure context
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- the store: conversations and their messages, merged by id from pages and events -----------------
const byNewest = (a, b) => (a.timestamp < b.timestamp ? 1 : a.timestamp > b.timestamp ? -1 : a.messageId < b.messageId ? 1 : -1);
const activity = (c) => c.lastMessage?.timestamp || c.updatedAt || c.createdAt || "";
const finished = (image) => image?.status === "ready" || image?.status === "failed";

/** The further of two copies of a message's metadata, image by image (an album's images finish one by one). */
function furtherMetadata(known, incoming) {
  if (!known || !incoming) return incoming;
  if (Array.isArray(known.images) && Array.isArray(incoming.images) && known.images.length === incoming.images.length) {
    const images = incoming.images.map((image, i) => (finished(known.images[i]) && !finished(image) ? known.images[i] : image));
    return { ...incoming, images };
  }
  return finished(known) && !finished(incoming) ? known : incoming;
}

/**
 * A message as known, merged with another copy of it. Answers and events race: a read receipt's answer
 * (the message as stored when it was read, maybe still processing) can arrive after the pipeline's
 * message.updated. A message only moves forward (readBy grows, processing becomes ready or failed, never
 * back; an edit is newer by its editedAt; a tombstone is final), so the merge keeps the further of each and
 * an older copy takes nothing back.
 */
function newestOf(known, incoming) {
  if (!known) return incoming;
  const readBy = [...new Set([...known.readBy, ...incoming.readBy])];
  if (known.deleted || incoming.deleted) return { ...(known.deleted ? known : incoming), readBy };
  const edited = (known.editedAt || "") > (incoming.editedAt || "") ? known : incoming;
  let metadata = furtherMetadata(known.metadata, incoming.metadata);
  // the alt texts are the newer edit's: the one image's, or each of an album's images'
  if (metadata && edited.metadata) {
    if (!Array.isArray(metadata.images)) metadata = { ...metadata, alt_text: edited.metadata.alt_text ?? null };
    else if (Array.isArray(edited.metadata.images)) {
      const altOf = (i) => edited.metadata.images[i]?.alt_text ?? null;
      metadata = { ...metadata, images: metadata.images.map((image, i) => ({ ...image, alt_text: altOf(i) })) };
    }
  }
  return { ...incoming, readBy, metadata, content: edited.content, editedAt: edited.editedAt };
}

/** What a deleted message leaves: who sent it and when, nothing of what it said. */
function tombstoneOf(message) {
  return { ...message, deleted: true, content: null, metadata: null };
}

class Store {
  constructor(api, me, onChange) {
    this.api = api;
    this.me = me;
    this.onChange = onChange;
    this.conversations = new Map(); // id -> conversation
    this.threads = new Map(); // id -> {messages: Map, nextCursor, loaded, loadingOlder}
    this.readsSent = new Set();
  }
  changed() {
    this.onChange();
  }
  thread(id) {
    let thread = this.threads.get(id);
    if (!thread) {
      thread = { messages: new Map(), nextCursor: null, loaded: false, loadingOlder: false, sorted: null };
      this.threads.set(id, thread);
    }
    return thread;
  }
  sortedMessages(id) {
    const thread = this.thread(id);
    thread.sorted ||= [...thread.messages.values()].sort(byNewest);
    return thread.sorted;
  }
  sortedConversations() {
    return [...this.conversations.values()].sort((a, b) => (activity(a) < activity(b) ? 1 : -1));
  }
  unread(id) {
    let count = 0;
    for (const m of this.thread(id).messages.values()) if (m.senderId !== this.me && !m.readBy.includes(this.me)) count++;
    return count;
  }
  putMessage(conversationId, incoming) {
    const thread = this.thread(conversationId);
    const message = newestOf(thread.messages.get(incoming.messageId), incoming);
    thread.messages.set(message.messageId, message);
    thread.sorted = null;
    const conversation = this.conversations.get(conversationId);
    if (conversation && (!conversation.lastMessage || conversation.lastMessage.timestamp <= message.timestamp)) {
      conversation.lastMessage = {
        messageId: message.messageId,
        senderId: message.senderId,
        messageType: message.messageType,
        preview: message.content || "",
        photos: message.messageType === "image" ? imagesOf(message).length : 0,
        timestamp: message.timestamp,
        deleted: Boolean(message.deleted),
      };
    }
  }
  async loadConversations() {
    const page = await this.api.conversations();
    for (const c of page.items) this.conversations.set(c.conversationId, c);
    this.changed();
    return page;
  }
  /**
   * The newest messages, merged by messageId. On a thread already loaded (the backfill after a reconnect)
   * it pages back until it meets a message it knows, so a long outage leaves no gap.
   */
  async loadNewest(id) {
    const thread = this.thread(id);
    const resuming = thread.loaded && thread.messages.size > 0;
    let cursor = null;
    for (let pages = 0; pages < 20; pages++) {
      const page = await this.api.messages(id, cursor);
      const metKnown = page.items.some((m) => thread.messages.has(m.messageId));
      for (const m of page.items) this.putMessage(id, m);
      if (!thread.loaded) thread.nextCursor = page.nextCursor;
      thread.loaded = true;
      if (!resuming || metKnown || !page.nextCursor) break;
      cursor = page.nextCursor;
    }
    this.changed();
  }
  async loadOlder(id) {
    const thread = this.thread(id);
    if (!thread.nextCursor || thread.loadingOlder) return;
    thread.loadingOlder = true;
    try {
      const page = await this.api.messages(id, thread.nextCursor);
      for (const m of page.items) this.putMessage(id, m);
      thread.nextCursor = page.nextCursor;
    } finally {
      thread.loadingOlder = false;
      this.changed();
    }
  }
  async addConversation(id) {
    const conversation = await this.api.conversation(id);
    this.conversations.set(id, conversation);
    await this.loadNewest(id);
  }
  async markRead(conversationId, message) {
    const key = `${conversationId}/${message.messageId}`;
    if (message.readBy.includes(this.me) || this.readsSent.has(key)) return;
    this.readsSent.add(key);
    try {
      this.putMessage(conversationId, await this.api.markRead(conversationId, message.messageId));
      this.changed();
    } catch {
      this.readsSent.delete(key); // tried again when it is next on screen
    }
  }
  /** Unsend one of mine (or, as an admin, anyone's); the tombstone shows at once. */
  async deleteMessage(conversationId, message) {
    await this.api.deleteMessage(conversationId, message.messageId);
    this.putMessage(conversationId, tombstoneOf(message));
    this.changed();
  }
  async editMessage(conversationId, message, changes) {
    this.putMessage(conversationId, await this.api.editMessage(conversationId, message.messageId, changes));
    this.changed();
  }
  /** A socket event (docs/api.md, "Real-time events"). */
  async apply(event) {
    const id = event.conversationId;
    switch (event.type) {
      case "message.created":
      case "message.updated":
      case "message.edited":
        if (!this.conversations.has(id)) return this.addConversation(id);
        this.putMessage(id, event.message);
        break;
      case "message.deleted": {
        const message = this.thread(id).messages.get(event.messageId);
        if (message) this.putMessage(id, tombstoneOf(message));
        break;
      }
      case "message.read": {
        const message = this.thread(id).messages.get(event.messageId);
        if (message) this.putMessage(id, { ...message, readBy: event.readBy });
        break;
      }
      case "conversation.joined":
        return this.addConversation(id);
      case "conversation.left":
        this.conversations.delete(id);
        this.threads.delete(id);
        break;
      default:
        return;
    }
    this.changed();
  }
  /** After a reconnect or a `session.resync`: what was missed, from the list endpoints, de-duplicated by id. */
  async backfill() {
    const page = await this.loadConversations();
    if (!page.nextCursor) {
      // the whole list: a conversation missing from it was left while offline
      const current = new Set(page.items.map((c) => c.conversationId));
      for (const id of [...this.conversations.keys()]) {
        if (!current.has(id)) {
          this.conversations.delete(id);
          this.threads.delete(id);
        }
      }
    }
    await Promise.all(page.items.map((c) => this.loadNewest(c.conversationId)));
  }
}

// --- components --------------------------------------------------------------------------------------
function SignIn({ onSignedIn, notice }) {
  const [user, setUser] = useState("");
  const [token, setToken] = useState("");
  const [error, setError] = useState(notice || "");
  const [busy, setBusy] = useState(false);

  async function devLogin(event) {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      const response = await fetch("/dev/token", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ userId: user.trim() }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new ApiError(response.status, body.code, body.detail);
      onSignedIn(body.token);
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  function pasted(event) {
    event.preventDefault();
    const value = token.trim().replace(/^Bearer\s+/i, "");
    if (!claimsOf(value)?.sub) {
      setError("That is not a token (a JWT with a `sub` claim).");
      return;
    }
    onSignedIn(value);
  }

  return html`<main class="signin">
    <h1>chat-management</h1>
    ${DEV_LOGIN &&
    html`<form onSubmit=${devLogin} aria-labelledby="dev-title">
      <h2 id="dev-title">Sign in as… <small>(dev only)</small></h2>
      <label for="dev-user">User id</label>
      <div class="row">
        <input id="dev-user" name="user" autocomplete="username" required pattern="[A-Za-z0-9_.@:\\-]{1,128}"
          value=${user} onInput=${(e) => setUser(e.currentTarget.value)} placeholder="alice" />
        <button type="submit" disabled=${busy}>Sign in</button>
      </div>
    </form>`}
    <form onSubmit=${pasted} aria-labelledby="token-title">
      <h2 id="token-title">Paste a token</h2>
      <label for="token">Bearer token (JWT)</label>
      <textarea id="token" rows="3" required value=${token} onInput=${(e) => setToken(e.currentTarget.value)}></textarea>
      <button type="submit">Use this token</button>
    </form>
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </main>`;
}

function timeOf(timestamp) {
  const date = new Date(timestamp);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { month: "short", day: "numeric" });
}

function titleOf(conversation, me) {
  const others = conversation.participants.filter((p) => p !== me);
  return conversation.name || others.join(", ") || "Just you";
}

function photoPreview(last) {
  const what = last.photos > 1 ? `${last.photos} photos` : "Photo";
  return last.preview ? `${what}: ${last.preview}` : what;
}

function ConversationList({ store, selected, onSelect }) {
  const conversations = store.sortedConversations();
  return html`<nav aria-label="Conversations">
    <ul class="conversations">
      ${conversations.length === 0 && html`<li class="empty">No conversations yet.</li>`}
      ${conversations.map((c) => {
        const unread = store.unread(c.conversationId);
        const last = c.lastMessage;
        const preview = !last ? "No messages" : last.deleted ? "Message deleted"
          : last.messageType === "image" ? photoPreview(last) : last.preview;
        return html`<li key=${c.conversationId}>
          <button type="button" class="conversation" aria-current=${selected === c.conversationId ? "true" : undefined}
            data-conversation=${c.conversationId} onClick=${() => onSelect(c.conversationId)}>
            <span class="title">${titleOf(c, store.me)}</span>
            ${last && html`<time datetime=${last.timestamp}>${timeOf(last.timestamp)}</time>`}
            <span class="preview">${last && last.senderId === store.me ? "You: " : ""}${preview}</span>
            ${unread > 0 && html`<span class="unread" aria-label=${`${unread} unread`}>${unread}</span>`}
          </button>
        </li>`;
      })}
    </ul>
  </nav>`;
}

function NewConversation({ store, onCreated }) {
  const [open, setOpen] = useState(false);
  const [participants, setParticipants] = useState("");
  const [name, setName] = useState("");
  const [error, setError] = useState("");

  async function create(event) {
    event.preventDefault();
    setError("");
    const ids = participants.split(/[\s,]+/).filter(Boolean);
    try {
      const conversation = await store.api.createConversation(ids, name.trim());
      store.conversations.set(conversation.conversationId, conversation);
      await store.loadNewest(conversation.conversationId);
      setParticipants("");
      setName("");
      setOpen(false);
      onCreated(conversation.conversationId);
    } catch (e) {
      setError(describeError(e));
    }
  }

  if (!open) {
    return html`<button type="button" class="new" onClick=${() => setOpen(true)}>New conversation</button>`;
  }
  return html`<form class="new-conversation" onSubmit=${create} aria-label="New conversation">
    <label for="participants">Participants (user ids, comma separated)</label>
    <input id="participants" required value=${participants} onInput=${(e) => setParticipants(e.currentTarget.value)}
      placeholder="bob, carol" autofocus />
    <label for="conversation-name">Name (optional)</label>
    <input id="conversation-name" value=${name} onInput=${(e) => setName(e.currentTarget.value)} />
    <div class="row">
      <button type="submit">Create</button>
      <button type="button" class="secondary" onClick=${() => setOpen(false)}>Cancel</button>
    </div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </form>`;
}

/**
 * One image: its BlurHash at once, then the thumbnail (or, before the pipeline, the image itself). Alone it
 * keeps the photo's proportions; in an album it fills its cell of the grid.
 */
function ImageTile({ image, label, onOpen, more = 0, index = 0, alone = false }) {
  const thumbnail = image.variants?.thumbnail;
  const width = thumbnail?.width || image.width || 4;
  const height = thumbnail?.height || image.height || 3;
  const status = image.status;
  const src = thumbnail?.url || (status === "processing" || status === "failed" ? null : image.url);
  const canvas = useRef(null);
  const [loaded, setLoaded] = useState(false);
  const [broken, setBroken] = useState(false);
  const hash = isValidBlurhash(image.blurhash) ? image.blurhash : null;

  useEffect(() => {
    if (hash && canvas.current) drawBlurhash(canvas.current, hash);
  }, [hash]);
  useEffect(() => {
    setLoaded(false);
    setBroken(false);
  }, [src]);

  const opens = more ? `Open ${label} (${more} more)` : `Open ${label}`;
  return html`<button type="button" class=${alone ? "photo" : "photo tile"} style=${alone ? { aspectRatio: `${width} / ${height}` } : undefined}
      onClick=${() => onOpen(index)} aria-label=${opens} data-status=${status || "none"} data-index=${index}
      disabled=${!src && status === "failed"}>
    ${hash
      ? html`<canvas ref=${canvas} class="blurhash" width="32" height=${Math.max(1, Math.round((32 * height) / width))}
          aria-hidden="true"></canvas>`
      : html`<span class="placeholder" aria-hidden="true"></span>`}
    ${src && !broken &&
    html`<img src=${src} alt=${label} width=${width} height=${height} decoding="async" loading="lazy"
        class=${loaded ? "loaded" : ""} onLoad=${() => setLoaded(true)} onError=${() => setBroken(true)} />`}
    ${more > 0 && html`<span class="more" aria-hidden="true">+${more}</span>`}
    ${status === "processing" && html`<span class="badge">Processing…</span>`}
    ${status === "failed" && html`<span class="badge error">Could not be processed${image.error ? `: ${image.error}` : ""}</span>`}
    ${broken && html`<span class="badge error">Image unavailable</span>`}
  </button>`;
}

/**
 * The images of a message: one alone, or an album as a grid (1, 2, 3 or 4 cells; past four the fourth says
 * "+N"). Each cell moves on by itself, as its `message.updated` (its `index`) says it is ready.
 */
function MessageImages({ message, onOpen }) {
  const images = imagesOf(message);
  const labelOf = (image, i) => {
    const described = image.alt_text || (images.length === 1 ? message.content : "");
    const name = images.length === 1 ? "Photo" : `Photo ${i + 1} of ${images.length}`;
    return described ? `${name}: ${described}` : name;
  };
  if (images.length === 1) {
    return html`<${ImageTile} image=${images[0]} label=${labelOf(images[0], 0)} onOpen=${onOpen} alone />`;
  }
  const shown = images.slice(0, 4);
  return html`<div class=${`album album-${shown.length}`} role="group" data-count=${images.length}
      aria-label=${`Album of ${images.length} photos${message.content ? `: ${message.content}` : ""}`}>
    ${shown.map((image, i) => html`<${ImageTile} key=${i} image=${image} label=${labelOf(image, i)} index=${i}
      onOpen=${onOpen} more=${i === 3 ? images.length - 4 : 0} />`)}
  </div>`;
}

/**
 * "Forward to…": the other conversations to pick from. The server copies the photo (no upload again) and
 * answers with the new message, ready at once; the page shows the target conversation with it.
 */
function ForwardDialog({ store, forwarding, onClose, onForwarded }) {
  const dialog = useRef(null);
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const clientMessageId = useMemo(randomId, [forwarding]);
  useEffect(() => {
    const element = dialog.current;
    setError("");
    if (forwarding && element && !element.open) element.showModal();
  }, [forwarding]);
  if (!forwarding) return null;
  const targets = store.sortedConversations().filter((c) => c.conversationId !== forwarding.conversationId);
  async function forwardTo(target) {
    if (busy) return;
    setBusy(true);
    try {
      const message = await store.api.forward(
        forwarding.conversationId, forwarding.message.messageId, target.conversationId, clientMessageId);
      store.putMessage(target.conversationId, message);
      dialog.current?.close();
      onForwarded(target.conversationId);
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }
  return html`<dialog ref=${dialog} class="forward-dialog" aria-labelledby="forward-title" onClose=${onClose}>
    <h3 id="forward-title">Forward to…</h3>
    ${targets.length === 0 && html`<p>No other conversation yet.</p>`}
    <ul>
      ${targets.map((c) => html`<li key=${c.conversationId}>
        <button type="button" class="secondary" disabled=${busy} onClick=${() => forwardTo(c)}>${titleOf(c, store.me)}</button>
      </li>`)}
    </ul>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="row"><button type="button" onClick=${() => dialog.current?.close()}>Cancel</button></div>
  </dialog>`;
}

function Receipt({ message, me }) {
  if (message.senderId !== me) return null;
  const readers = message.readBy.filter((u) => u !== me);
  return html`<span class="receipt" data-read=${readers.length > 0 ? "yes" : "no"}>
    ${readers.length ? `Read by ${readers.join(", ")}` : "Sent"}</span>`;
}

/**
 * Edit the text (or caption) and the photos' descriptions of one of my messages, in place. The API takes one
 * image's `alt_text` per edit (`index` names an album's image), so an album's changed descriptions go one
 * request each, after the caption.
 */
function EditForm({ store, conversationId, message, onDone }) {
  const images = message.messageType === "image" ? imagesOf(message) : [];
  const [content, setContent] = useState(message.content || "");
  const [altTexts, setAltTexts] = useState(() => images.map((image) => image.alt_text || ""));
  const [error, setError] = useState(null);
  async function save(event) {
    event.preventDefault();
    const edits = [{ content: content.trim() ? content : null }];
    if (images.length === 1) edits[0].alt_text = altTexts[0].trim() ? altTexts[0] : null;
    else {
      altTexts.forEach((text, index) => {
        if (text !== (images[index].alt_text || "")) edits.push({ alt_text: text.trim() ? text : null, index });
      });
    }
    try {
      for (const changes of edits) await store.editMessage(conversationId, message, changes);
      onDone();
    } catch (e) {
      setError(describeError(e));
    }
  }
  const describe = (index, text) => setAltTexts(altTexts.map((old, i) => (i === index ? text : old)));
  return html`<form class="edit" onSubmit=${save}>
    <label>${images.length ? "Edit caption" : "Edit message"}
      <textarea value=${content} onInput=${(e) => setContent(e.target.value)} maxlength="4000"></textarea></label>
    ${altTexts.map((text, index) => html`<label key=${index}>${images.length === 1
        ? "Edit description (alt text)" : `Edit description of photo ${index + 1} (alt text)`}
      <input value=${text} onInput=${(e) => describe(index, e.target.value)} maxlength="1000" /></label>`)}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="row"><button type="submit">Save</button><button type="button" onClick=${onDone}>Cancel</button></div>
  </form>`;
}

function MessageActions({ store, conversationId, message, onEdit }) {
  const [error, setError] = useState(null);
  async function unsend() {
    if (!window.confirm("Delete this message for everyone?")) return;
    try {
      await store.deleteMessage(conversationId, message);
    } catch (e) {
      setError(describeError(e));
    }
  }
  return html`<span class="actions">
    <button type="button" class="link" onClick=${onEdit}>Edit</button>
    <button type="button" class="link danger" onClick=${unsend}>Delete</button>
    ${error && html`<span class="error" role="alert">${error}</span>`}
  </span>`;
}

function MessageItem({ store, conversationId, message, observer, onOpen, onForward }) {
  const element = useRef(null);
  const [editing, setEditing] = useState(false);
  const mine = message.senderId === store.me;
  const unreadByMe = !mine && !message.readBy.includes(store.me);
  useEffect(() => {
    const node = element.current;
    if (!unreadByMe || !node || !observer) return undefined;
    node._read = () => store.markRead(conversationId, message);
    observer.observe(node);
    return () => {
      observer.unobserve(node);
      node._read = null;
    };
  }, [unreadByMe, observer, message]);
  if (message.deleted) {
    return html`<li ref=${element} class=${`message deleted ${mine ? "mine" : "theirs"}`} data-message=${message.messageId}
        data-deleted="yes">
      ${!mine && html`<span class="sender">${message.senderId}</span>`}
      <p class="text tombstone">${mine ? "You deleted this message" : "This message was deleted"}</p>
      <span class="meta"><time datetime=${message.timestamp}>${timeOf(message.timestamp)}</time></span>
    </li>`;
  }
  return html`<li ref=${element} class=${`message ${mine ? "mine" : "theirs"}`} data-message=${message.messageId}>
    ${!mine && html`<span class="sender">${message.senderId}</span>`}
    ${message.messageType === "image" &&
    html`<${MessageImages} message=${message} onOpen=${(index) => onOpen({ conversationId, messageId: message.messageId, index })} />`}
    ${editing
      ? html`<${EditForm} store=${store} conversationId=${conversationId} message=${message} onDone=${() => setEditing(false)} />`
      : message.content && html`<p class="text">${message.content}</p>`}
    <span class="meta">${message.forwarded && html`<span class="forwarded">Forwarded</span>`}
      <time datetime=${message.timestamp}>${timeOf(message.timestamp)}</time>
      ${message.editedAt && html`<span class="edited" title=${`Edited ${timeOf(message.editedAt)}`}>edited</span>`}
      <${Receipt} message=${message} me=${store.me} />
      <button type="button" class="link forward" onClick=${() => onForward(conversationId, message)}
        aria-label="Forward to…" title="Forward to…">↪</button>
      ${mine && !editing && html`<${MessageActions} store=${store} conversationId=${conversationId} message=${message}
        onEdit=${() => setEditing(true)} />`}</span>
  </li>`;
}

function MessageList({ store, conversationId, onOpen, onForward }) {
  const scroller = useRef(null);
  const sentinel = useRef(null);
  const [observer, setObserver] = useState(null);
  const thread = store.thread(conversationId);
  const messages = store.sortedMessages(conversationId);

  // Read receipts: a message counts as read once half of it has been on screen in a visible page.
  useEffect(() => {
    const seen = new IntersectionObserver(
      (entries) => {
        if (document.visibilityState !== "visible") return;
        for (const entry of entries) if (entry.isIntersecting) entry.target._read?.();
      },
      { root: scroller.current, threshold: 0.5 },
    );
    setObserver(seen);
    // back from another tab: what is on screen now counts (re-observing reports it afresh)
    const visible = () => {
      if (document.visibilityState !== "visible" || !scroller.current) return;
      for (const node of scroller.current.querySelectorAll("li.message")) {
        if (node._read) {
          seen.unobserve(node);
          seen.observe(node);
        }
      }
    };
    document.addEventListener("visibilitychange", visible);
    return () => {
      seen.disconnect();
      document.removeEventListener("visibilitychange", visible);
    };
  }, [conversationId]);

  // Infinite scroll: the sentinel above the oldest message asks for the page before it.
  useEffect(() => {
    const top = new IntersectionObserver(
      (entries) => entries.some((e) => e.isIntersecting) && store.loadOlder(conversationId),
      { root: scroller.current, rootMargin: "400px 0px 0px 0px" },
    );
    if (sentinel.current) top.observe(sentinel.current);
    return () => top.disconnect();
  }, [conversationId, thread.nextCursor]);

  // column-reverse: the newest message is at the bottom and older pages grow upwards without a jump
  return html`<div class="messages" ref=${scroller} tabindex="0" aria-label="Messages">
    <ol aria-live="polite" aria-relevant="additions">
      ${messages.map((m) => html`<${MessageItem} key=${m.messageId} store=${store} conversationId=${conversationId}
        message=${m} observer=${observer} onOpen=${onOpen} onForward=${onForward} />`)}
    </ol>
    <div ref=${sentinel} class="history">
      ${thread.loadingOlder ? "Loading older messages…" : thread.nextCursor ? "" : thread.loaded ? "Start of the conversation" : "Loading…"}
    </div>
  </div>`;
}

const fileName = (file) => file.name || "pasted image";
const plural = (n, one, many) => (n === 1 ? one : many);

/** Worth another try: the network, a timeout, a limit or the server's own trouble (a 415 or 413 is not). */
function retryable(error) {
  if (!(error instanceof ApiError)) return true;
  return error.status === 0 || error.status === 403 || error.status === 408 || error.status === 429 || error.status >= 500;
}

/**
 * The photos attached to the next message, up to MAX_IMAGES_PER_MESSAGE: each uploads at once and in
 * parallel (upload URL, then the PUT with its own progress), a failure worth retrying stays with a Retry
 * button, one that is not (415, 413) is taken out with the server's words. ``clientMessageId`` is one per
 * set of photos, so a send tried again after a network error is not stored twice.
 */
function useAttachments(store, conversationId) {
  const [items, setItems] = useState([]);
  const [notice, setNotice] = useState(null);
  const live = useRef([]);
  const batch = useRef(randomId());
  const publish = () => setItems([...live.current]);

  const forget = (item) => {
    item.abort?.();
    URL.revokeObjectURL(item.previewUrl);
    live.current = live.current.filter((other) => other !== item);
    batch.current = randomId();
  };
  const upload = (item) => {
    Object.assign(item, { state: "uploading", progress: 0, error: "", abort: null });
    const uploaded = (async () => {
      const ticket = await store.api.uploadUrl(conversationId, item.file);
      const contentType = item.file.type || "application/octet-stream";
      const put = putFile(ticket.upload_url, item.file, contentType, (progress) => {
        item.progress = progress;
        publish();
      });
      item.abort = put.abort;
      await put.done;
      return { ...ticket, content_type: contentType };
    })();
    item.uploaded = uploaded;
    uploaded.then(
      () => {
        item.state = "done";
        publish();
      },
      (e) => {
        if (!live.current.includes(item) || item.uploaded !== uploaded) return; // removed or retried meanwhile
        if (retryable(e)) {
          Object.assign(item, { state: "failed", error: describeError(e) });
        } else {
          forget(item);
          setNotice({ text: `Couldn't upload ${fileName(item.file)}: ${describeError(e)}` });
        }
        publish();
      },
    );
  };
  const add = useCallback(
    (files) => {
      if (files.length === 0) return;
      const room = Math.max(0, MAX_IMAGES_PER_MESSAGE - live.current.length);
      const left = files.slice(room);
      setNotice(
        left.length
          ? { text: `One message holds at most ${MAX_IMAGES_PER_MESSAGE} photos: ${left.map(fileName).join(", ")} ${plural(left.length, "was", "were")} left out.` }
          : null,
      );
      for (const file of files.slice(0, room)) {
        const item = { id: randomId(), file, previewUrl: URL.createObjectURL(file) };
        live.current = [...live.current, item];
        upload(item);
      }
      batch.current = randomId();
      publish();
    },
    [store, conversationId],
  );
  const remove = (item) => {
    forget(item);
    publish();
  };
  const retry = (item) => {
    upload(item);
    publish();
  };
  const clear = () => {
    for (const item of live.current) forget(item);
    publish();
  };
  const describe = (item, text) => {
    item.alt = text;
    publish();
  };
  useEffect(() => clear, [conversationId]);
  return { items, notice, add, remove, retry, clear, describe, clientMessageId: () => batch.current };
}

function Attachments({ attachments }) {
  const { items, remove, retry, describe } = attachments;
  if (items.length === 0) return null;
  return html`<ul class="attachments" aria-label=${`${items.length} ${plural(items.length, "photo", "photos")} attached`}>
    ${items.map((item) => {
      const name = fileName(item.file);
      return html`<li key=${item.id} class="attachment" data-state=${item.state}>
        <img src=${item.previewUrl} alt=${`Attached: ${name}`} />
        <div class="upload">
          <span class="name">${name}</span>
          ${item.state === "failed"
            ? html`<span class="error" role="alert">${item.error}</span>`
            : html`<progress max="1" value=${item.progress} aria-label=${`Upload progress of ${name}`}>${Math.round(item.progress * 100)}%</progress>`}
          <input class="alt" maxlength="1000" placeholder="Describe it (alt text)" value=${item.alt || ""}
            aria-label=${`Description of ${name}`} onInput=${(e) => describe(item, e.currentTarget.value)} />
        </div>
        <span class="actions">
          ${item.state === "failed" &&
          html`<button type="button" onClick=${() => retry(item)} aria-label=${`Retry ${name}`}>Retry</button>`}
          <button type="button" class="secondary" onClick=${() => remove(item)} aria-label=${`Remove ${name}`}>Remove</button>
        </span>
      </li>`;
    })}
  </ul>`;
}

function Composer({ store, conversationId, attachments }) {
  const [text, setText] = useState("");
  const [error, setError] = useState("");
  const [sending, setSending] = useState(false);
  const textInput = useRef(null);
  const { items, notice } = attachments;

  async function send(event) {
    event.preventDefault();
    if (sending) return;
    const caption = text.trim();
    if (items.length === 0 && !caption) return;
    if (items.some((item) => item.state === "failed")) {
      setError("Some photos did not upload: retry or remove them first.");
      return;
    }
    setSending(true);
    setError("");
    const sent = items;
    try {
      let body;
      if (sent.length) {
        let uploaded;
        try {
          uploaded = await Promise.all(sent.map((item) => item.uploaded));
        } catch {
          return; // the photo that failed says why (or was taken out, with the server's words)
        }
        const images = uploaded.map((u, i) => ({
          object_key: u.object_key,
          url: u.file_url,
          content_type: u.content_type,
          alt_text: sent[i].alt?.trim() || undefined,
        }));
        body = {
          messageType: "image",
          content: caption || undefined,
          metadata: images.length === 1 ? images[0] : { images }, // one photo keeps the spec's shape
          clientMessageId: attachments.clientMessageId(),
        };
      } else {
        body = { messageType: "text", content: caption, clientMessageId: randomId() };
      }
      const message = await store.api.send(conversationId, body);
      store.putMessage(conversationId, message);
      store.changed();
      setText("");
      if (sent.length) attachments.clear();
      textInput.current?.focus();
    } catch (e) {
      const refused = e instanceof ApiError && e.status >= 400 && e.status !== 429 && e.status !== 503;
      const culprit = e instanceof ApiError && e.index !== null ? sent[e.index] : null;
      if (culprit) {
        setError(`Couldn't send ${fileName(culprit.file)}: ${describeError(e)}`);
        attachments.remove(culprit); // the others stay, to send again
      } else {
        setError(describeError(e));
        if (sent.length && refused) attachments.clear(); // these uploads cannot be sent: choose the photos again
      }
    } finally {
      setSending(false);
    }
  }

  useEffect(() => setError(notice ? notice.text : ""), [notice]);

  const pick = (e) => {
    const files = [...(e.currentTarget.files || [])];
    e.currentTarget.value = "";
    attachments.add(files);
  };
  const paste = (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (files.length) {
      e.preventDefault();
      attachments.add(files);
    }
  };

  return html`<form class="composer" onSubmit=${send} aria-label="Send a message">
    <${Attachments} attachments=${attachments} />
    ${error && html`<p class="error" role="alert">${error}
      <button type="button" class="link" onClick=${() => setError("")} aria-label="Dismiss">✕</button></p>`}
    <div class="row">
      <input id="photo-input" type="file" accept="image/*" multiple class="visually-hidden" onChange=${pick} />
      <label for="photo-input" class="button secondary"
        title=${`Attach photos, up to ${MAX_IMAGES_PER_MESSAGE} (or drop or paste them)`}>Photos</label>
      <label for="message-input" class="visually-hidden">${items.length ? "Caption" : "Message"}</label>
      <input ref=${textInput} id="message-input" autocomplete="off" maxlength="4000" value=${text}
        placeholder=${items.length ? "Add a caption…" : "Message"} onInput=${(e) => setText(e.currentTarget.value)}
        onPaste=${paste} />
      <button type="submit" disabled=${sending}>Send</button>
    </div>
  </form>`;
}

function Conversation({ store, conversationId, onBack, onOpen, onForward }) {
  const conversation = store.conversations.get(conversationId);
  const attachments = useAttachments(store, conversationId);
  const [dragging, setDragging] = useState(false);

  const drop = (e) => {
    e.preventDefault();
    setDragging(false);
    attachments.add([...(e.dataTransfer?.files || [])]);
  };
  if (!conversation) return html`<section class="conversation-pane empty"><p>Choose a conversation.</p></section>`;
  return html`<section class="conversation-pane" aria-labelledby="conversation-title"
      onDragOver=${(e) => { e.preventDefault(); setDragging(true); }} onDragLeave=${() => setDragging(false)} onDrop=${drop}>
    <header>
      <button type="button" class="back secondary" onClick=${onBack} aria-label="Back to conversations">←</button>
      <h2 id="conversation-title">${titleOf(conversation, store.me)}</h2>
      <span class="members">${conversation.participants.join(", ")}</span>
    </header>
    <${MessageList} store=${store} conversationId=${conversationId} onOpen=${onOpen} onForward=${onForward} />
    <${Composer} key=${conversationId} store=${store} conversationId=${conversationId} attachments=${attachments} />
    ${dragging && html`<div class="dropzone" aria-hidden="true">Drop photos to send them (up to ${MAX_IMAGES_PER_MESSAGE})</div>`}
  </section>`;
}

function Chat({ session, onSignOut }) {
  const [, setTick] = useState(0);
  const [status, setStatus] = useState("connecting");
  const [selected, setSelected] = useState(() => decodeURIComponent(location.hash.slice(1)) || null);
  const [viewing, setViewing] = useState(null);
  const [forwarding, setForwarding] = useState(null);
  const [error, setError] = useState("");
  const store = useMemo(() => new Store(new Api(session.token), session.userId, () => setTick((t) => t + 1)), [session]);

  useEffect(() => {
    let first = true;
    const failed = (e) =>
      e instanceof ApiError && e.status === 401 ? onSignOut("Your token was refused: sign in again.") : setError(describeError(e));
    store
      .loadConversations()
      .then((page) => Promise.all(page.items.slice(0, 20).map((c) => store.loadNewest(c.conversationId))))
      .catch(failed);
    const socket = connectSocket(session.token, {
      onStatus: setStatus,
      onReady: () => {
        if (!first) store.backfill().catch(failed);
        first = false;
      },
      onResync: () => store.backfill().catch(failed),
      onEvent: (event) => store.apply(event).catch(failed),
      onUnauthorized: () => onSignOut("Your session has expired: sign in again."),
    });
    const reassert = () => setImageCookie(session.token); // another window may have signed in as someone else
    window.addEventListener("focus", reassert);
    // a photo dropped beside the conversation must not navigate away from the chat
    const keep = (e) => e.preventDefault();
    window.addEventListener("dragover", keep);
    window.addEventListener("drop", keep);
    return () => {
      socket.close();
      window.removeEventListener("focus", reassert);
      window.removeEventListener("dragover", keep);
      window.removeEventListener("drop", keep);
    };
  }, [store]);

  useEffect(() => {
    if (selected && store.conversations.has(selected) && !store.thread(selected).loaded) store.loadNewest(selected).catch(() => {});
    history.replaceState(null, "", selected ? `#${encodeURIComponent(selected)}` : location.pathname);
  }, [selected, store.conversations.size]);

  return html`<div class=${`chat ${selected ? "has-selection" : ""}`}>
    <header class="top">
      <strong>chat-management</strong>
      <span class=${`status ${status}`} role="status" aria-label=${`Connection: ${status}`}>${status}</span>
      <span class="me">Signed in as <b>${session.userId}</b></span>
      <button type="button" class="secondary" onClick=${() => onSignOut("")}>Sign out</button>
    </header>
    ${error && html`<p class="error banner" role="alert">${error}
      <button type="button" class="link" onClick=${() => setError("")} aria-label="Dismiss">✕</button></p>`}
    <aside class="sidebar">
      <${NewConversation} store=${store} onCreated=${setSelected} />
      <${ConversationList} store=${store} selected=${selected} onSelect=${setSelected} />
    </aside>
    <${Conversation} store=${store} conversationId=${selected} onBack=${() => setSelected(null)} onOpen=${setViewing}
      onForward=${(conversationId, message) => setForwarding({ conversationId, message })} />
    <${Viewer} store=${store} target=${viewing} onClose=${() => setViewing(null)} />
    <${ForwardDialog} store=${store} forwarding=${forwarding} onClose=${() => setForwarding(null)}
      onForwarded=${setSelected} />
  </div>`;
}

function App() {
  const [session, setSession] = useState(loadSession);
  const [notice, setNotice] = useState("");
  useEffect(() => {
    if (session) setImageCookie(session.token);
  }, [session]);

  const signIn = (token) => {
    const next = { token, userId: claimsOf(token).sub };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(next));
    setImageCookie(token);
    setNotice("");
    setSession(next);
  };
  const signOut = (why) => {
    sessionStorage.removeItem(SESSION_KEY);
    clearImageCookie();
    setNotice(why || "");
    setSession(null);
  };
  return session
    ? html`<${Chat} key=${session.token} session=${session} onSignOut=${signOut} />`
    : html`<${SignIn} onSignedIn=${signIn} notice=${notice} />`;
}

render(html`<${App} />`, document.getElementById("app"));
