// The node's API: the bearer token (kept for this tab only), JSON calls, downloads,
// and the live event stream (fetch + ReadableStream: EventSource cannot send the token).

const KEY = 'cpn.token';

export const session = { token: sessionStorage.getItem(KEY), me: null, onExpired: () => {} };

export class ApiError extends Error {
  constructor(status, answer) {
    super(answer?.error || `the node answered ${status}`);
    this.status = status;
    this.field = answer?.field ?? null;
  }
}

export function signIn(token) {
  session.token = token;
  sessionStorage.setItem(KEY, token);
}

export function signOut() {
  session.token = null;
  session.me = null;
  sessionStorage.removeItem(KEY);
}

function headers(json) {
  const found = { Authorization: `Bearer ${session.token}` };
  if (json) found['Content-Type'] = 'application/json';
  return found;
}

async function check(response) {
  if (response.ok) return response;
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (response.status === 401) session.onExpired();
  throw new ApiError(response.status, answer);
}

export async function api(path, { method = 'GET', body } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  await check(response);
  return response.json();
}

/** A request with files: `form` (FormData) goes as multipart/form-data, as it is. */
export async function upload(path, form) {
  const response = await fetch(path, { method: 'POST', headers: headers(false), body: form, cache: 'no-store' });
  await check(response);
  return response.json();
}

/** A file the node offers (an export, an attachment): its bytes and the name it gives it. */
export async function download(path) {
  const response = await check(await fetch(path, { headers: headers(false), cache: 'no-store' }));
  const disposition = response.headers.get('Content-Disposition') || '';
  const utf8 = /filename\*=UTF-8''([^;]+)/.exec(disposition)?.[1];
  const name = (utf8 && decodeURIComponent(utf8)) || /filename="([^"]+)"/.exec(disposition)?.[1] || 'download';
  return { blob: await response.blob(), name };
}

/**
 * Follow the node's live events until `stop()`; reconnects with backoff.
 * `onEvent(kind, data)` for each event; `onStatus(live)` when the stream opens or drops.
 */
export function follow(onEvent, onStatus) {
  const abort = new AbortController();
  let delay = 500;
  (async () => {
    while (!abort.signal.aborted) {
      try {
        const response = await check(
          await fetch('/api/events', { headers: headers(false), signal: abort.signal }),
        );
        onStatus(true);
        delay = 500;
        await read(response.body, onEvent);
      } catch (error) {
        if (abort.signal.aborted || (error instanceof ApiError && error.status === 401)) return;
      }
      onStatus(false);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15000);
    }
  })();
  return () => abort.abort();
}

async function read(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) kind = line.slice(7);
        else if (line.startsWith('data: ')) data += line.slice(6);
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}
