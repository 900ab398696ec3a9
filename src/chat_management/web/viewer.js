// The photo viewer: every image of the conversation, from the gallery endpoint (`GET …/images`, newest
// first, paged with `nextCursor`), browsed from older to newer with previous/next, ←/→ and a swipe; zoom with
// the wheel, a pinch, a double-click or +/-, and pan by dragging while zoomed. A modal <dialog>: the page
// behind it is inert, Tab stays inside, Esc closes.
import { h } from "./vendor/preact.mjs";
import { useEffect, useRef, useState } from "./vendor/hooks.mjs";
import htm from "./vendor/htm.mjs";
import { drawBlurhash, isValidBlurhash } from "./blurhash.js";

const html = htm.bind(h);
const PAGE = 50;
const PAGES_TO_FIND = 20; // how far back the viewer looks for the photo it was opened on
const MAX_SCALE = 6;
const STEP = 1.5; // one press of + or -
const SWIPE_PX = 50;
const UNZOOMED = { scale: 1, x: 0, y: 0 };

/** The images of an image message: `metadata.images` for an album, else the one image `metadata` is. */
export function imagesOf(message) {
  const metadata = message?.metadata;
  if (!metadata) return [];
  return Array.isArray(metadata.images) ? metadata.images : [metadata];
}

const keyOf = (item) => `${item.messageId}/${item.index}`;
const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
function chronological(a, b) {
  if (a.timestamp !== b.timestamp) return a.timestamp < b.timestamp ? -1 : 1;
  if (a.messageId !== b.messageId) return a.messageId < b.messageId ? -1 : 1;
  return a.index - b.index;
}

/** A message's images as gallery items: what the viewer shows before the gallery answers (or if it cannot). */
function itemsOf(message) {
  return imagesOf(message).map((image, index) => ({
    messageId: message.messageId,
    index,
    url: image.url,
    width: image.width,
    height: image.height,
    blurhash: image.blurhash,
    status: image.status,
    senderId: message.senderId,
    timestamp: message.timestamp,
    alt_text: image.alt_text ?? null,
  }));
}

/** What to draw for ``item``: the message as the page knows it now wins over the gallery's older copy. */
function displayOf(store, conversationId, item) {
  const message = store.thread(conversationId).messages.get(item.messageId);
  if (message?.deleted) return { ...item, deleted: true, src: null };
  const live = message ? imagesOf(message)[item.index] : null;
  const status = live?.status ?? item.status;
  const url = live?.url || item.url;
  const preview = live?.variants?.preview;
  const pending = status === "processing" || status === "failed";
  return {
    ...item,
    url,
    status,
    src: preview?.url || (status === "ready" ? `${url}?variant=preview` : pending ? null : url),
    width: preview?.width || live?.width || item.width || 4,
    height: preview?.height || live?.height || item.height || 3,
    blurhash: live?.blurhash || item.blurhash,
    alt: live?.alt_text ?? item.alt_text ?? "",
    caption: message?.content || "",
    error: live?.error || "",
  };
}

function Blurhash({ hash, width, height }) {
  const canvas = useRef(null);
  useEffect(() => {
    if (canvas.current) drawBlurhash(canvas.current, hash);
  }, [hash]);
  return html`<canvas ref=${canvas} class="blurhash" width="32" height=${Math.max(1, Math.round((32 * height) / width))}
    aria-hidden="true"></canvas>`;
}

function opening(store, target) {
  const message = store.thread(target.conversationId).messages.get(target.messageId);
  const items = message ? itemsOf(message) : [];
  const wanted = `${target.messageId}/${target.index}`;
  return {
    target,
    conversationId: target.conversationId,
    items,
    position: Math.max(0, items.findIndex((item) => keyOf(item) === wanted)),
    cursor: null,
    loading: true,
    closed: false,
    zoom: UNZOOMED,
  };
}

/** Adds gallery items, keeping the photo on screen where it is (they sort in around it). */
function take(state, more, wanted) {
  const onScreen = state.items[state.position];
  const key = onScreen ? keyOf(onScreen) : wanted;
  const byKey = new Map(state.items.map((item) => [keyOf(item), item]));
  for (const item of more) byKey.set(keyOf(item), item);
  state.items = [...byKey.values()].sort(chronological);
  state.position = Math.max(0, state.items.findIndex((item) => keyOf(item) === key));
}

/** The gallery's next page back (older images), if there is one and none is on its way. */
async function loadOlder(store, state, onChange) {
  if (state.loading || !state.cursor || state.closed) return;
  state.loading = true;
  try {
    // a page of a conversation that is mostly text may hold no image: on to the next one
    for (let pages = 0; pages < PAGES_TO_FIND && state.cursor; pages++) {
      const page = await store.api.images(state.conversationId, state.cursor, PAGE);
      if (state.closed) return;
      take(state, page.items, null);
      state.cursor = page.nextCursor || null;
      if (page.items.length) break;
    }
  } catch {
    // tried again at the next step back
  } finally {
    state.loading = false;
    onChange();
  }
}

/** ``target``: `{conversationId, messageId, index}` of the photo to open, or null (closed). */
export function Viewer({ store, target, onClose }) {
  const dialog = useRef(null);
  const stage = useRef(null);
  const frame = useRef(null);
  const view = useRef(null); // what opening() returns, for the target on screen
  const pointers = useRef(new Map());
  const gesture = useRef(null);
  const [, setTick] = useState(0);
  const refresh = () => setTick((t) => t + 1);

  if (view.current?.target !== target) view.current = target ? opening(store, target) : null;
  const state = view.current;

  useEffect(() => {
    if (!state) return undefined;
    if (dialog.current && !dialog.current.open) dialog.current.showModal();
    const wanted = `${target.messageId}/${target.index}`;
    (async () => {
      let cursor = null;
      try {
        for (let pages = 0; pages < PAGES_TO_FIND; pages++) {
          const page = await store.api.images(state.conversationId, cursor, PAGE);
          if (state.closed) return;
          take(state, page.items, wanted);
          state.cursor = page.nextCursor || null;
          if (!state.cursor || page.items.some((item) => item.messageId === target.messageId)) break;
          cursor = state.cursor;
        }
      } catch {
        // the gallery is out of reach: this message's photos alone
      }
      state.loading = false;
      refresh();
      if (state.position <= 2) loadOlder(store, state, refresh); // ahead of the person browsing back
    })();
    return () => {
      state.closed = true;
    };
  }, [state]);

  // the neighbours' previews load while this one is looked at
  useEffect(() => {
    if (!target || !state) return;
    for (const delta of [-1, 1]) {
      const item = state.items[state.position + delta];
      const src = item && displayOf(store, state.conversationId, item).src;
      if (src) new Image().src = src;
    }
  });
  // Keys on the document, not the dialog: a button that goes disabled (Next on the last photo) drops the
  // focus to the page's body, and the keys must still work.
  const keys = useRef(null);
  useEffect(() => {
    if (!state) return undefined;
    const listener = (event) => keys.current?.(event);
    document.addEventListener("keydown", listener);
    return () => document.removeEventListener("keydown", listener);
  }, [state]);
  if (!target || !state) return null;

  async function go(delta) {
    if (state.position + delta < 0) {
      if (!state.cursor) return;
      await loadOlder(store, state, refresh);
      if (state.position + delta < 0) return;
    }
    if (state.position + delta >= state.items.length) return;
    state.position += delta;
    state.zoom = UNZOOMED;
    refresh();
    if (state.position <= 2) loadOlder(store, state, refresh); // ahead of the person browsing back
  }

  const sizeOf = () => ({ width: frame.current?.offsetWidth || 0, height: frame.current?.offsetHeight || 0 });
  const pannedWithin = (zoom) => {
    const { width, height } = sizeOf();
    const maxX = (width * (zoom.scale - 1)) / 2;
    const maxY = (height * (zoom.scale - 1)) / 2;
    return { scale: zoom.scale, x: clamp(zoom.x, -maxX, maxX), y: clamp(zoom.y, -maxY, maxY) };
  };
  /** Zooms by ``factor`` keeping the point (px, py), from the stage's centre, where it is on screen. */
  function zoomTo(scale, px = 0, py = 0) {
    const zoom = state.zoom;
    const next = clamp(scale, 1, MAX_SCALE);
    const k = next / zoom.scale;
    state.zoom = next === 1 ? UNZOOMED : pannedWithin({ scale: next, x: px - (px - zoom.x) * k, y: py - (py - zoom.y) * k });
    refresh();
  }
  const fromCentre = (clientX, clientY) => {
    const box = stage.current.getBoundingClientRect();
    return [clientX - box.left - box.width / 2, clientY - box.top - box.height / 2];
  };

  function keyDown(event) {
    const keys = {
      ArrowLeft: () => go(-1),
      ArrowRight: () => go(1),
      "+": () => zoomTo(state.zoom.scale * STEP),
      "=": () => zoomTo(state.zoom.scale * STEP),
      "-": () => zoomTo(state.zoom.scale / STEP),
      0: () => zoomTo(1),
    };
    if (keys[event.key] && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      keys[event.key]();
    } else if (event.key === "Tab") {
      // showModal makes the page inert; this keeps Tab cycling through the viewer's own controls
      const focusable = [...dialog.current.querySelectorAll("button:not([disabled]), a[href]")];
      const first = focusable[0];
      const last = focusable[focusable.length - 1];
      if (!dialog.current.contains(document.activeElement)) {
        event.preventDefault();
        (event.shiftKey ? last : first).focus();
      } else if (event.shiftKey && document.activeElement === first) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && document.activeElement === last) {
        event.preventDefault();
        first.focus();
      }
    }
  }

  // Pointer gestures: one finger (or the mouse) pans when zoomed and swipes when not; two fingers pinch.
  function pointerDown(event) {
    stage.current.setPointerCapture?.(event.pointerId);
    pointers.current.set(event.pointerId, { x: event.clientX, y: event.clientY });
    const points = [...pointers.current.values()];
    if (points.length === 2) {
      gesture.current = { pinch: Math.hypot(points[0].x - points[1].x, points[0].y - points[1].y) || 1, scale: state.zoom.scale };
    } else if (points.length === 1) {
      gesture.current = { startX: event.clientX, startY: event.clientY, lastX: event.clientX, lastY: event.clientY };
    }
  }
  function pointerMove(event) {
    if (!pointers.current.has(event.pointerId) || !gesture.current) return;
    pointers.current.set(event.pointerId, { x: event.clientX, y: event.clientY });
    const points = [...pointers.current.values()];
    const move = gesture.current;
    if (move.pinch && points.length === 2) {
      const distance = Math.hypot(points[0].x - points[1].x, points[0].y - points[1].y);
      zoomTo(move.scale * (distance / move.pinch), ...fromCentre((points[0].x + points[1].x) / 2, (points[0].y + points[1].y) / 2));
    } else if (!move.pinch && state.zoom.scale > 1) {
      state.zoom = pannedWithin({ ...state.zoom, x: state.zoom.x + event.clientX - move.lastX, y: state.zoom.y + event.clientY - move.lastY });
      refresh();
    }
    move.lastX = event.clientX;
    move.lastY = event.clientY;
  }
  function pointerUp(event) {
    if (!pointers.current.delete(event.pointerId)) return;
    const move = gesture.current;
    if (pointers.current.size > 0) {
      gesture.current = null; // the rest of a pinch is neither a pan nor a swipe
      return;
    }
    gesture.current = null;
    if (!move || move.pinch || state.zoom.scale > 1 || event.type === "pointercancel") return;
    const dx = event.clientX - move.startX;
    const dy = event.clientY - move.startY;
    if (Math.abs(dx) > SWIPE_PX && Math.abs(dx) > 1.5 * Math.abs(dy)) go(dx < 0 ? 1 : -1);
  }

  const item = state.items[state.position];
  const shown = item ? displayOf(store, state.conversationId, item) : null;
  const { scale, x, y } = state.zoom;
  const ratio = shown ? shown.width / shown.height : 4 / 3;
  const hash = shown && isValidBlurhash(shown.blurhash) ? shown.blurhash : null;
  const canGoBack = state.position > 0 || Boolean(state.cursor);
  const canGoOn = state.position < state.items.length - 1;
  const close = () => dialog.current?.close();
  const when = shown ? new Date(shown.timestamp) : null;

  keys.current = keyDown;
  return html`<dialog ref=${dialog} class="viewer" aria-label="Photo" onClose=${onClose}>
    <div ref=${stage} class=${`viewer-stage${scale > 1 ? " zoomed" : ""}`} onPointerDown=${pointerDown}
        onPointerMove=${pointerMove} onPointerUp=${pointerUp} onPointerCancel=${pointerUp} onDragStart=${(e) => e.preventDefault()}
        onWheel=${(e) => {
          e.preventDefault();
          zoomTo(scale * Math.exp(-e.deltaY * 0.0015), ...fromCentre(e.clientX, e.clientY));
        }}
        onDblClick=${(e) => zoomTo(scale > 1 ? 1 : 2.5, ...fromCentre(e.clientX, e.clientY))}>
      ${shown &&
      html`<div ref=${frame} class="viewer-frame" data-scale=${scale.toFixed(2)}
          style=${{ aspectRatio: `${shown.width} / ${shown.height}`, width: `min(100%, calc(70vh * ${ratio.toFixed(4)}))`,
            transform: `translate(${x}px, ${y}px) scale(${scale})` }}>
        ${hash && html`<${Blurhash} key=${hash} hash=${hash} width=${shown.width} height=${shown.height} />`}
        ${shown.src &&
        html`<img key=${keyOf(shown)} src=${shown.src} alt=${shown.alt || shown.caption || "Photo"} width=${shown.width}
            height=${shown.height} draggable=${false} />`}
        ${shown.deleted && html`<p class="badge">This photo was deleted</p>`}
        ${shown.status === "processing" && !shown.deleted && html`<p class="badge">Processing…</p>`}
        ${shown.status === "failed" && !shown.deleted &&
        html`<p class="badge error">Could not be processed${shown.error ? `: ${shown.error}` : ""}</p>`}
      </div>`}
    </div>
    <div class="viewer-bar">
      <button type="button" class="secondary" onClick=${() => go(-1)} disabled=${!canGoBack} aria-label="Previous photo">‹</button>
      <span class="position" aria-live="polite">${state.items.length ? `${state.position + 1} of ${state.items.length}` : ""}${
        state.loading ? " …" : ""}</span>
      <button type="button" class="secondary" onClick=${() => go(1)} disabled=${!canGoOn} aria-label="Next photo">›</button>
      <button type="button" class="secondary" onClick=${() => zoomTo(scale / STEP)} disabled=${scale <= 1} aria-label="Zoom out">−</button>
      <button type="button" class="secondary" onClick=${() => zoomTo(scale * STEP)} disabled=${scale >= MAX_SCALE} aria-label="Zoom in">+</button>
      ${shown && !shown.deleted && html`<a href=${shown.url} target="_blank" rel="noopener noreferrer">Open original</a>`}
      <button type="button" onClick=${close} autofocus>Close</button>
    </div>
    ${shown?.alt && html`<p class="alt"><span class="visually-hidden">Description: </span>${shown.alt}</p>`}
    ${shown?.caption && html`<p class="caption">${shown.caption}</p>`}
    ${shown && html`<p class="by">${shown.senderId} · <time datetime=${shown.timestamp}>${when.toLocaleString()}</time></p>`}
  </dialog>`;
}
