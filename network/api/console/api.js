// The node's API: the session (a cookie the page cannot read, and the CSRF token it sends
// with every change), JSON calls, downloads, and the live event stream.

export const session = { me: null, csrf: null, onExpired: () => {} };

// That this tab signed in (not the session itself, which only the cookie holds): a first
// visit does not ask the node for a session it cannot have.
const MARK = 'cpn.signed-in';

export class ApiError extends Error {
  constructor(status, answer) {
    super(answer?.error || `the node answered ${status}`);
    this.status = status;
    this.field = answer?.field ?? null;
  }
}

/** Sign in: the token proves who you are, once; the node answers with a session cookie. */
export async function signIn(token) {
  const response = await fetch('/api/session', {
    method: 'POST', headers: { Authorization: `Bearer ${token}` }, cache: 'no-store',
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  adopt(await response.json());
  sessionStorage.setItem(MARK, '1');
}

/** A public sign-in step (`/auth/...`): JSON in, JSON out, the session's cookie set. */
async function auth(path, body) {
  const response = await fetch(path, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), cache: 'no-store',
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

/** Sign in with a passkey (WebAuthn, discoverable: no name typed). */
export async function signInWithPasskey() {
  const { ceremony, options } = await auth('/auth/passkey/begin', {});
  const credential = await navigator.credentials.get({
    publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey),
  });
  adopt(await auth('/auth/passkey/finish', { ceremony, credential: credential.toJSON() }));
  sessionStorage.setItem(MARK, '1');
}

/** An enrolment link: register the person's first passkey, and sign them in. */
export async function enrol(code, label) {
  const { ceremony, options } = await auth('/auth/enrol/begin', { code });
  const credential = await navigator.credentials.create({
    publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey),
  });
  adopt(await auth('/auth/enrol/finish', { code, ceremony, credential: credential.toJSON(), label }));
  sessionStorage.setItem(MARK, '1');
}

/** Another passkey for the person signed in (a second device, a security key). */
export async function addPasskey(label) {
  const { ceremony, options } = await api('/api/passkeys/begin', { method: 'POST', body: {} });
  const credential = await navigator.credentials.create({
    publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey),
  });
  return api('/api/passkeys/finish', { method: 'POST', body: { ceremony, credential: credential.toJSON(), label } });
}

/** A page (re)loaded: the session the cookie holds, if it is still open. */
export async function resume(anyway = false) {
  if (!anyway && !sessionStorage.getItem(MARK)) return false;
  const response = await fetch('/api/session', { cache: 'no-store' });
  if (!response.ok) {
    sessionStorage.removeItem(MARK);
    return false;
  }
  adopt(await response.json());
  sessionStorage.setItem(MARK, '1');
  return true;
}

function adopt(answer) {
  session.me = { user: answer.user, role: answer.role, node: answer.node };
  session.csrf = answer.csrf;
}

/** Sign out: the node ends the session (its cookie opens nothing after). */
export async function signOut() {
  const csrf = session.csrf;
  session.me = null;
  session.csrf = null;
  sessionStorage.removeItem(MARK);
  if (csrf) await fetch('/api/session', { method: 'DELETE', headers: { 'X-CSRF-Token': csrf } }).catch(() => null);
}

function headers(json) {
  const found = {};
  if (session.csrf) found['X-CSRF-Token'] = session.csrf;
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
