// The console: sign in, then the officer's or the auditor's pages, chosen by the hash
// (#/inbox, #/compose, #/message/ID, #/audit, ...). Live events refresh what is shown.

import { addPasskey, api, ApiError, download, enrol, follow, resume, session, signIn, signInWithPasskey, signOut, upload } from './api.js';
import { append, badge, brief, byUrgency, clear, h, label, show, table, when } from './dom.js';
import { Form, control, record } from './forms.js';

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const liveMark = document.getElementById('live');

const OFFICER_PAGES = [['inbox', 'Inbox'], ['outbox', 'Outbox'], ['compose', 'Compose'], ['alerts', 'Alerts'],
  ['preservations', 'Preservations'], ['search', 'Search'], ['statistics', 'Statistics'], ['peers', 'Peers'],
  ['passkeys', 'Passkeys']];
const PAGES = {
  officer: OFFICER_PAGES,
  // An approver works the desk, and approves what another officer composed (four eyes).
  approver: [['approvals', 'Approvals'], ...OFFICER_PAGES],
  auditor: [['audit', 'Audit log'], ['alerts', 'Alerts'], ['search', 'Search'], ['statistics', 'Statistics'], ['peers', 'Peers'], ['passkeys', 'Passkeys']],
  admin: [['accounts', 'Accounts'], ['peers', 'Peers'], ['passkeys', 'Passkeys']],
};

let stopFollowing = null;
let current = { refresh: null }; // the page shown: refresh(event) reloads what an event changes
let types = null;

// -- start, sign in, sign out ------------------------------------------------------

session.onExpired = () => leave('Your session ended: sign in again.');
document.getElementById('signout').addEventListener('click', () => leave('Signed out.'));
window.addEventListener('hashchange', route);
start();

async function start() {
  const enrolling = /^#\/enrol\/([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (enrolling) return enrolPage(enrolling[1]);
  const refused = /^#\/signin-refused\/(.*)$/.exec(location.hash);
  if (refused) {
    history.replaceState(null, '', '#/');
    return signInPage(`Single sign-on refused: ${decodeURIComponent(refused[1])}`);
  }
  // Back from the agency's single sign-on: the node has just set the session's cookie.
  const fromSso = location.hash === '#/signed-in';
  if (fromSso) history.replaceState(null, '', '#/');
  if (!(await resume(fromSso))) return signInPage();
  enter();
}

// An enrolment link (cpn user add): the person registers their passkey, and is signed in.
function enrolPage(code) {
  document.getElementById('top').hidden = true;
  const label = h('input', { id: 'passkey-label', type: 'text', maxlength: 100, value: 'my passkey' });
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'signin card', novalidate: true },
    h('h1', {}, 'cpn console'),
    h('p', {}, 'Register your passkey: your device (fingerprint, face, PIN) or a security key signs you in from now on. This link works once.'),
    h('label', { for: 'passkey-label' }, 'Name it (to tell your passkeys apart)'), label, error,
    h('button', { type: 'submit', class: 'primary' }, 'Register a passkey'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      await enrol(code, label.value.trim() || 'passkey');
    } catch (failure) {
      error.textContent = failure.message;
      return;
    }
    history.replaceState(null, '', '#/');
    enter();
  });
  clear(main, form);
}

function signInPage(message = '') {
  document.getElementById('top').hidden = true;
  // The agency's single sign-on, where the node has one: a button to its provider.
  const sso = h('p', {});
  fetch('/auth/methods', { cache: 'no-store' }).then((r) => r.json()).then((methods) => {
    if (methods.oidc) {
      sso.append(h('a', { class: 'button primary', id: 'oidc-signin', href: '/auth/oidc/start' }, `Sign in with ${methods.oidc}`));
    }
  }).catch(() => null);
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, placeholder: 'cpn_…' });
  const error = h('p', { class: 'error', role: 'alert' }, message);
  const form = h('form', { class: 'signin card', novalidate: true },
    h('h1', {}, 'cpn console'),
    h('p', { class: 'muted' }, 'The 24/7 contact-point network.'),
    h('button', { type: 'button', class: 'primary', id: 'passkey-signin', onclick: async () => {
      unlockSound();
      try {
        await signInWithPasskey();
      } catch (failure) {
        error.textContent = failure.message;
        return;
      }
      enter();
    } }, 'Sign in with a passkey'),
    sso,
    h('p', { class: 'muted' }, 'Or with an API token:'),
    h('label', { for: 'token' }, 'Token'), token, error,
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    unlockSound(); // a click: the browser lets the page make sound from now on
    try {
      await signIn(token.value.trim());
    } catch (failure) {
      error.textContent = failure instanceof ApiError && failure.status === 401
        ? 'This token is not valid (or was revoked).' : failure.message;
      return;
    }
    token.value = '';
    enter();
  });
  clear(main, form);
  token.focus();
}

function enter() {
  const { user, role, node } = session.me;
  document.getElementById('top').hidden = false;
  document.getElementById('node').textContent = node;
  document.getElementById('who').textContent = `${user} (${role})`;
  const nav = document.getElementById('nav');
  clear(nav, (PAGES[role] || []).map(([page, text]) => h('a', { href: `#/${page}`, 'data-page': page }, text)));
  if (role !== 'admin') {
    stopFollowing?.();
    stopFollowing = follow(onEvent, (live) => {
      liveMark.textContent = live ? 'live' : 'reconnecting…';
      liveMark.classList.toggle('on', live);
      if (live) current.refresh?.(null); // what happened while away
    });
  }
  if (!location.hash || location.hash === '#/') location.hash = `#/${PAGES[role]?.[0]?.[0] || 'peers'}`;
  else route();
}

function leave(message) {
  stopFollowing?.();
  stopFollowing = null;
  signOut();
  liveMark.textContent = 'offline';
  liveMark.classList.remove('on');
  banner.hidden = true;
  history.replaceState(null, '', '#/');
  signInPage(message);
}

/** Fetch `path` (with the token) and save what it answers as the file the node names. */
async function save(path) {
  const { blob, name } = await download(path);
  const link = h('a', { href: URL.createObjectURL(blob), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  return name;
}

// -- routing -------------------------------------------------------------------------

const VIEWS = {
  inbox: () => messagesPage('in'),
  outbox: () => messagesPage('out'),
  compose: composePage,
  message: messagePage,
  case: casePage,
  alerts: alertsPage,
  preservations: preservationsPage,
  peers: peersPage,
  audit: auditPage,
  statistics: statisticsPage,
  search: searchPage,
  accounts: accountsPage,
  approvals: approvalsPage,
  passkeys: passkeysPage,
};

function route() {
  if (!session.me) return;
  const [page, arg] = location.hash.replace(/^#\/?/, '').split('/');
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('current', link.dataset.page === page);
  }
  current = { refresh: null };
  const view = VIEWS[page];
  if (!view) return clear(main, h('p', {}, 'No such page.'));
  view(arg ? decodeURIComponent(arg) : undefined).catch((error) => {
    clear(main, h('p', { class: 'error', role: 'alert' }, error.message));
  });
}

function page(title, ...children) {
  clear(main, h('h1', {}, title), children);
}

// -- live events --------------------------------------------------------------------

function onEvent(kind, event) {
  // A flash request (not the answers to ours, which carry its priority too).
  if (kind === 'message' && event.priority === 'flash' && REQUESTS.includes(event.type)) flash(event);
  current.refresh?.(event);
}

function flash(event) {
  clear(banner,
    h('strong', {}, 'FLASH'), ` ${label(event.type || 'message')} from ${event.from || '?'} — life or safety at risk. `,
    h('a', { href: `#/message/${encodeURIComponent(event.id)}` }, 'Open it'),
    h('button', { type: 'button', class: 'quiet', onclick: () => { banner.hidden = true; } }, 'Dismiss'));
  banner.hidden = false;
  banner.dataset.sound = beep() ? 'played' : 'muted';
}

let audio = null;

function unlockSound() {
  try {
    audio ??= new AudioContext();
    audio.resume();
  } catch {
    audio = null;
  }
}

/** Three short two-tone beeps (an oscillator: no sound files). */
function beep() {
  unlockSound();
  if (!audio) return false;
  const start = audio.currentTime;
  for (let i = 0; i < 6; i++) {
    const tone = audio.createOscillator();
    const gain = audio.createGain();
    tone.type = 'square';
    tone.frequency.value = i % 2 ? 660 : 880;
    gain.gain.value = 0.08;
    tone.connect(gain).connect(audio.destination);
    tone.start(start + i * 0.2);
    tone.stop(start + i * 0.2 + 0.16);
  }
  return true;
}

// -- messages -----------------------------------------------------------------------

// Which deadline a message waits on in each state: the one an officer has to beat next.
const WAITS_ON = {
  queued: 'receipt', sent: 'receipt', delivered: 'acknowledgement',
  received: 'acknowledgement', opened: 'acknowledgement', acknowledged: 'response',
};

function nextDeadline(m) {
  const kind = WAITS_ON[m.state];
  const due = kind && m.deadlines[kind];
  return due ? `${kind} by ${when(due)}` : '';
}

function messageRows(messages) {
  return messages.map((m) => {
    const link = `#/message/${encodeURIComponent(m.id)}`;
    return h('tr', { class: m.overdue.length ? 'overdue' : '', 'data-id': m.id, onclick: () => { location.hash = link; } },
      h('td', {}, badge(m.priority)),
      h('td', {}, h('a', { href: link }, label(m.type))),
      h('td', {}, m.peer),
      // The request's listing line: its case reference and its summary's first line.
      h('td', { 'data-case': m.id }, m.case_ref || ''),
      h('td', { class: 'summary-line' }, m.summary || ''),
      h('td', {}, badge(m.state, 'state')),
      h('td', {}, m.overdue.length ? badge(`overdue: ${m.overdue.join(', ')}`, 'overdue') : nextDeadline(m)),
      h('td', {}, when(m.created)),
      h('td', { 'data-held': m.id }, m.assigned_to || ''),
      h('td', { class: 'mono' }, m.id.slice(-12)));
  });
}

async function messagesPage(box) {
  const holder = h('div');
  page(box === 'in' ? 'Inbox' : 'Outbox', holder);
  const load = async () => {
    const { messages } = await api(`/api/messages?box=${box}&limit=500`);
    messages.sort(byUrgency);
    clear(holder, messages.length
      ? table(['Priority', 'Type', box === 'in' ? 'From' : 'To', 'Case', 'Summary', 'State', 'Deadlines', 'Created', 'Held by', 'Id'], messageRows(messages), { class: 'messages' })
      : h('p', { class: 'muted' }, box === 'in' ? 'Nothing received yet.' : 'Nothing sent yet.'));
  };
  current.refresh = load;
  await load();
}

// One case: every message either side filed under its reference, each tracked on its own
// (one request to several countries is one message to each).
async function casePage(ref) {
  const reference = decodeURIComponent(ref || '');
  const holder = h('div');
  page(`Case ${reference}`, holder);
  const load = async () => {
    const { messages } = await api(`/api/messages?case=${encodeURIComponent(reference)}&limit=500`);
    messages.sort(byUrgency);
    clear(holder, messages.length
      ? table(['Priority', 'Type', 'Country', 'Case', 'Summary', 'State', 'Deadlines', 'Created', 'Held by', 'Id'], messageRows(messages), { class: 'messages case' })
      : h('p', { class: 'muted' }, 'No message of this case.'),
    session.me.role === 'auditor' ? null : holdCard(reference, load));
  };
  current.refresh = load;
  await load();
}

// A legal hold stops retention deleting the case's messages until it is released (audited).
function holdCard(reference, reload) {
  const status = h('p', { class: 'muted', role: 'status' });
  const reason = h('input', { id: 'hold-reason', type: 'text', maxlength: 1000, placeholder: 'the proceedings, the order' });
  const act = async (path) => {
    try {
      await api(path, { method: 'POST', body: { case_ref: reference, reason: reason.value.trim() } });
      status.textContent = path.endsWith('release') ? 'Hold released.' : 'Hold placed: retention deletes nothing of this case.';
      reason.value = '';
    } catch (error) {
      status.textContent = error.message;
    }
  };
  return h('section', { class: 'card hold' }, h('h2', {}, 'Legal hold'),
    h('p', { class: 'muted' }, 'While a hold stands, no retention rule deletes the contents of this case\'s messages.'),
    h('div', { class: 'field' }, h('label', { for: 'hold-reason' }, 'Reason'), reason),
    h('button', { type: 'button', class: 'primary', onclick: () => act('/api/holds') }, 'Place hold'),
    h('button', { type: 'button', onclick: () => act('/api/holds/release') }, 'Release hold'),
    status);
}

async function describedTypes() {
  types ??= (await api('/api/types')).types;
  return types;
}

const REQUESTS = ['preservation', 'traffic_disclosure', 'mla_notice', 'emergency', 'technical_advice', 'legal_information', 'evidence', 'locate'];

async function composePage() {
  const [described, { peers }] = await Promise.all([describedTypes(), api('/api/peers')]);
  const form = new Form();
  const select = (name, choices, text) => {
    const input = h('select', { id: `compose-${name}`, name, 'data-path': name },
      h('option', { value: '' }, '— choose —'), choices.map(([value, shown]) => h('option', { value }, shown)));
    const error = h('span', { class: 'error', 'data-error-for': name });
    form.slot(name, error);
    return [input, h('div', { class: 'field required' }, h('label', { for: input.id }, text), input, error)];
  };
  const [to, toField] = select('to', peers.map((p) => [p.id, `${p.id} — ${p.name}`]), 'To');
  const [type, typeField] = select('type', REQUESTS.map((t) => [t, label(t)]), 'Type');
  const [priority, priorityField] = select('priority',
    [['flash', 'Flash: life or safety at risk'], ['urgent', 'Urgent: data may be lost within hours'], ['routine', 'Routine']], 'Priority');
  // One request to several countries: a message of its own to each, one case reference.
  const also = peers.map((p) => h('label', { class: 'also' },
    h('input', { type: 'checkbox', value: p.id, 'data-also': p.id }), ` ${p.id}`));
  const alsoField = h('fieldset', { class: 'field also-to' }, h('legend', {}, 'Also send to'), also);
  const title = h('p', { class: 'muted' });
  const holder = h('div');
  let body = null;
  type.addEventListener('change', () => {
    form.clearErrors();
    const desc = described[type.value];
    title.textContent = desc ? desc.title : '';
    body = desc ? record(desc, 'body', form) : null;
    clear(holder, body?.el);
  });
  // Files go with the request, sealed end to end; the node names and hashes them in its body.
  const files = h('input', { id: 'compose-files', type: 'file', multiple: true, 'data-path': 'attachments',
    accept: '.pdf,.png,.jpg,.jpeg,.gif,.webp,.txt,.csv,application/pdf,image/png,image/jpeg,image/gif,image/webp,text/plain,text/csv' });
  const filesError = h('span', { class: 'error', 'data-error-for': 'body.attachments' });
  form.slot('body.attachments', filesError);
  const filesField = h('div', { class: 'field' }, h('label', { for: 'compose-files' }, 'Attach files (PDF, images, text)'), files, filesError);
  const status = h('p', { class: 'muted', role: 'status' });
  const element = h('form', { class: 'compose card', novalidate: true },
    form.summary, h('div', { class: 'row' }, toField, typeField, priorityField), alsoField, title, holder, filesField,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Check and send'), status));
  element.addEventListener('submit', async (event) => {
    event.preventDefault();
    const errors = [];
    for (const [name, input] of [['to', to], ['type', type], ['priority', priority]]) {
      if (!input.value) errors.push([name, 'required field is missing']);
    }
    body?.check(errors);
    if (errors.length) return form.showErrors(errors);
    form.clearErrors();
    status.textContent = 'Sending…';
    const recipients = [to.value, ...also.map((l) => l.firstChild).filter((c) => c.checked && c.value !== to.value).map((c) => c.value)];
    try {
      const content = body.read() ?? {};
      const message = { to: recipients.length > 1 ? recipients : to.value, type: type.value, priority: priority.value, body: content };
      let sent;
      if (files.files.length) {
        const data = new FormData();
        data.append('message', new Blob([JSON.stringify(message)], { type: 'application/json' }));
        for (const file of files.files) data.append('attachment', file, file.name);
        sent = await upload('/api/messages', data);
      } else {
        sent = await api('/api/messages', { method: 'POST', body: message });
      }
      location.hash = sent.messages ? `#/case/${encodeURIComponent(content.case_ref)}` : `#/message/${encodeURIComponent(sent.id)}`;
    } catch (error) {
      status.textContent = '';
      form.showServerError(error);
    }
  });
  page('Compose a request', element);
}

async function messagePage(id) {
  if (atDesk()) await describedTypes();
  const details = h('div');
  const actions = h('div');
  page('Message', details, actions);
  let state = null;
  const load = async () => {
    const message = await api(`/api/messages/${encodeURIComponent(id)}`);
    renderMessage(details, message);
    // The actions follow the state and who holds it (not every refresh: typed text stays).
    const now = `${message.state} ${message.assigned_to}`;
    if (now !== state) {
      state = now;
      await renderActions(actions, message, load);
    }
  };
  current.refresh = (event) => (!event || event.id === id || event.in_reply_to === id ? load() : null);
  await load();
}

/** A body's fields in the order its type declares them (the node sends them sorted). */
function ordered(value, desc) {
  if (!desc || value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const out = {};
  for (const field of desc.fields) {
    if (!(field.name in value)) continue;
    const item = value[field.name];
    const inner = field.kind === 'list' ? field.items : field;
    out[field.name] = Array.isArray(item) ? item.map((one) => ordered(one, inner.kind === 'record' ? inner : null))
      : ordered(item, field.kind === 'record' ? field : null);
  }
  for (const [key, item] of Object.entries(value)) if (!(key in out)) out[key] = item;
  return out;
}

function renderMessage(holder, m) {
  const header = m.header || {};
  const facts = [
    ['Id', m.id], ['Type', label(m.type)], [m.box === 'in' ? 'From' : 'To', m.peer],
    ['Priority', badge(m.priority)], ['State', badge(m.state, 'state')],
    ['Overdue', m.overdue.length ? badge(m.overdue.join(', '), 'overdue') : 'no'],
    ['Created', when(m.created)], ['Expires', when(m.expires)],
    ['Composed by', m.composed_by], ['Acknowledged by', m.acknowledged_by],
    ['Preserved until', preservedUntil(m)],
    ['Case', m.body?.case_ref ? h('a', { href: `#/case/${encodeURIComponent(m.body.case_ref)}` }, m.body.case_ref) : null],
    ['Hop limit', header.hop_limit], ['Suite', header.suite],
  ].filter(([, value]) => value !== null && value !== undefined);
  const receipts = m.receipts.map((r) => h('tr', {},
    h('td', {}, r.direction), h('td', {}, r.signer), h('td', {}, badge(r.outcome, 'state')),
    h('td', {}, r.reason || ''), h('td', {}, when(r.time))));
  const thread = m.thread.map((t) => h('li', {},
    h('a', { href: `#/message/${encodeURIComponent(t.id)}` }, label(t.type)),
    ` ${t.box === 'in' ? 'from' : 'to'} ${t.peer} · `, badge(t.state, 'state'), ` · ${when(t.created)}`));
  // Each reading is audited; the timeline shows a reader's first (the audit log has all).
  const readers = new Set();
  const steps = m.timeline.filter((step) => step.action !== 'opened' || !readers.has(step.actor) && readers.add(step.actor));
  const timeline = steps.map((step) => h('li', { 'data-action': step.action },
    h('span', { class: 'time' }, when(step.time)), ' ',
    h('strong', {}, step.action.replace(/_/g, ' ')), ' ',
    h('span', { class: 'muted' }, step.actor), ' ',
    h('span', { class: 'detail' }, brief(step.detail))));
  clear(holder,
    h('section', { class: 'card' }, h('h2', {}, 'Header'),
      h('dl', { class: 'facts' }, facts.map(([key, value]) => [h('dt', {}, key), h('dd', { 'data-fact': key }, value)]))),
    h('section', { class: 'card body' }, h('h2', {}, 'Body'), m.deleted
      ? h('p', { 'data-fact': 'Deleted' }, `Contents deleted ${when(m.deleted.at)} under retention rule ${m.deleted.rule}: the receipts and the log still prove what was exchanged, not what it said.`)
      : show(ordered(m.body, types?.[m.type]))),
    filesCard(m),
    h('section', { class: 'card' }, h('h2', {}, 'Thread'),
      thread.length ? h('ul', { class: 'thread' }, thread) : h('p', { class: 'muted' }, 'No other message in this thread.')),
    h('section', { class: 'card' }, h('h2', {}, 'Receipts'),
      receipts.length ? table(['Direction', 'Signer', 'Outcome', 'Reason', 'Time'], receipts) : h('p', { class: 'muted' }, 'No receipt yet.')),
    h('section', { class: 'card' }, h('h2', {}, 'Timeline'), h('ol', { class: 'timeline' }, timeline)));
}

// The files a message carries: each as its sender named and hashed it, how far its parts
// have come, and a download once all are here (checked against that hash; audited).
function filesCard(m) {
  if (!m.attachments?.length) return null;
  const status = h('p', { class: 'muted', role: 'status' });
  const rows = m.attachments.map((f) => h('tr', { 'data-file': f.index },
    h('td', {}, f.name), h('td', {}, f.media_type), h('td', {}, `${f.size} bytes`),
    h('td', {}, f.complete ? (m.box === 'out' ? 'delivered' : 'here') : `${f.arrived} of ${f.parts} parts`),
    h('td', { class: 'mono' }, f.sha256.slice(0, 16) + '…'),
    h('td', {}, f.complete || m.box === 'out' ? h('button', { type: 'button', onclick: async () => {
      try {
        status.textContent = `Downloaded ${await save(`/api/messages/${encodeURIComponent(m.id)}/attachments/${f.index}`)}.`;
      } catch (error) {
        status.textContent = error.message;
      }
    } }, 'Download') : '')));
  return h('section', { class: 'card files' }, h('h2', {}, 'Attachments'),
    table(['Name', 'Kind', 'Size', 'Arrived', 'SHA-256', ''], rows), status);
}

/** The officer roles: an approver works the desk too. */
function atDesk() {
  return ['officer', 'approver'].includes(session.me.role);
}

// Four eyes: approve a request another officer composed (it goes now), or send it back.
function approvalCard(m, reload) {
  const status = h('p', { class: 'muted', role: 'status' });
  const text = h('input', { id: 'approval-text', type: 'text', maxlength: 2000, placeholder: 'what you checked, or why it goes back' });
  const decide = async (action, body) => {
    try {
      await api(`/api/messages/${encodeURIComponent(m.id)}/${action}`, { method: 'POST', body });
      await reload();
    } catch (error) {
      status.textContent = error.message;
    }
  };
  const held = m.state === 'awaiting_approval';
  return h('section', { class: 'card approval' }, h('h2', {}, 'Approval'),
    h('p', {}, held ? `Composed by ${m.composed_by}: it leaves only once you approve it.` : `Composed by ${m.composed_by}; it went at once (flash): approve it now.`),
    h('div', { class: 'field' }, h('label', { for: 'approval-text' }, held ? 'Note or reason' : 'Note'), text),
    h('button', { type: 'button', class: 'primary', onclick: () => decide('approve', text.value.trim() ? { note: text.value.trim() } : {}) }, 'Approve'),
    held ? h('button', { type: 'button', onclick: () => decide('send-back', { reason: text.value.trim() }) }, 'Send back') : null,
    status);
}

// One's own passkeys, and another one added (a second device, a security key).
async function passkeysPage() {
  const holder = h('div');
  const label = h('input', { id: 'new-passkey-label', type: 'text', maxlength: 100, value: 'another passkey' });
  const status = h('p', { class: 'muted', role: 'status' });
  const load = async () => {
    const { passkeys } = await api('/api/passkeys');
    clear(holder, passkeys.length
      ? table(['Label', 'Registered', 'Last used'], passkeys.map((k) => h('tr', { 'data-passkey': k.id },
        h('td', {}, k.label), h('td', {}, when(k.created)), h('td', {}, when(k.last_used)))), { class: 'passkeys' })
      : h('p', { class: 'muted' }, 'No passkey yet: you signed in with a token.'));
  };
  page('Passkeys', holder, h('section', { class: 'card' }, h('h2', {}, 'Add a passkey'),
    h('div', { class: 'field' }, h('label', { for: 'new-passkey-label' }, 'Name it'), label),
    h('button', { type: 'button', class: 'primary', onclick: async () => {
      try {
        await addPasskey(label.value.trim() || 'passkey');
        status.textContent = 'Added.';
        await load();
      } catch (error) {
        status.textContent = error.message;
      }
    } }, 'Add a passkey'), status));
  await load();
}

async function approvalsPage() {
  const holder = h('div');
  page('Approvals', holder);
  const load = async () => {
    const { messages } = await api('/api/approvals');
    clear(holder, messages.length
      ? table(['Priority', 'Type', 'To', 'Case', 'Summary', 'State', 'Deadlines', 'Created', 'Held by', 'Id'], messageRows(messages), { class: 'messages approvals' })
      : h('p', { class: 'muted' }, 'Nothing waits for approval.'));
  };
  current.refresh = load;
  await load();
}

async function renderActions(holder, m, reload) {
  clear(holder);
  if (session.me.role === 'auditor' && m.box !== 'relay') return renderEvidence(holder, m);
  const officer = atDesk() && REQUESTS.includes(m.type);
  if (m.approval === 'pending' && session.me.role === 'approver' && m.composed_by !== session.me.user) {
    holder.append(approvalCard(m, reload));
  }
  if (['awaiting_approval', 'sent_back'].includes(m.state)) return;
  if (officer && m.box === 'out' && m.state !== 'withdrawn') return renderFollowUp(holder, m, reload);
  const takesAction = officer && m.box === 'in';
  if (takesAction) holder.append(deskCard(m, reload));
  if (!takesAction || ['answered', 'expired', 'rejected', 'withdrawn'].includes(m.state)) return;
  const described = await describedTypes();
  const status = h('p', { class: 'muted', role: 'status' });
  if (m.state !== 'acknowledged') {
    const note = h('input', { id: 'ack-note', type: 'text', maxlength: 2000, placeholder: 'optional note to the sender' });
    const ack = h('form', { class: 'card', novalidate: true }, h('h2', {}, 'Acknowledge'),
      h('div', { class: 'field' }, h('label', { for: 'ack-note' }, 'Note'), note),
      h('button', { type: 'submit', class: 'primary' }, 'Acknowledge'));
    ack.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        await api(`/api/messages/${encodeURIComponent(m.id)}/ack`, { method: 'POST', body: note.value.trim() ? { note: note.value.trim() } : {} });
        status.textContent = 'Acknowledged: the sender is told.';
        await reload();
      } catch (error) {
        status.textContent = error.message;
      }
    });
    holder.append(ack);
  }
  const form = new Form();
  const reply = record(described.response, 'body', form, { omit: ['in_reply_to'] });
  const element = h('form', { class: 'card reply', novalidate: true }, h('h2', {}, 'Reply'), form.summary, reply.el,
    h('button', { type: 'submit', class: 'primary' }, 'Send the reply'));
  element.addEventListener('submit', async (event) => {
    event.preventDefault();
    const errors = [];
    reply.check(errors);
    if (errors.length) return form.showErrors(errors);
    try {
      await api(`/api/messages/${encodeURIComponent(m.id)}/reply`, { method: 'POST', body: reply.read() ?? {} });
      status.textContent = 'Reply sent.';
      await reload();
    } catch (error) {
      form.showServerError(underBody(error));
    }
  });
  append(holder, element, status);
}

// Work shared within the desk: who holds a received request; take it, or hand it over at a
// shift change with a note (each step audited).
function deskCard(m, reload) {
  const status = h('p', { class: 'muted', role: 'status' });
  const to = h('input', { id: 'assign-to', type: 'text', maxlength: 100, placeholder: 'the officer taking over' });
  const note = h('input', { id: 'assign-note', type: 'text', maxlength: 2000, placeholder: 'what is under way' });
  const assign = async (body) => {
    try {
      await api(`/api/messages/${encodeURIComponent(m.id)}/assign`, { method: 'POST', body });
      await reload();
    } catch (error) {
      status.textContent = error.message;
    }
  };
  const mine = m.assigned_to === session.me.user;
  return h('section', { class: 'card desk' }, h('h2', {}, 'Desk'),
    h('p', { 'data-fact': 'Held by' }, m.assigned_to ? `Held by ${m.assigned_to}.` : 'Nobody holds it yet.'),
    mine ? null : h('button', { type: 'button', class: 'primary', onclick: () => assign({}) }, 'Take it'),
    h('div', { class: 'field' }, h('label', { for: 'assign-to' }, 'Hand over to'), to),
    h('div', { class: 'field' }, h('label', { for: 'assign-note' }, 'Handover note'), note),
    h('button', { type: 'button', onclick: () => assign(note.value.trim() ? { to: to.value.trim(), note: note.value.trim() } : { to: to.value.trim() }) }, 'Hand over'),
    status);
}

// A reply's or follow-up's fields go as they are, and the node names them so (`note`); the
// form holds them under `body`, as it does a composed message's.
function underBody(error) {
  if (!error.field || error.field === 'id') return error;
  const problem = error.message.startsWith(`${error.field}: `) ? error.message.slice(error.field.length + 2) : error.message;
  return { field: `body.${error.field}`, message: `body.${error.field}: ${problem}` };
}

// The auditor's: the message's evidence package, verifiable offline by anyone
// (cpn evidence verify, tools/verify_evidence.py); its bodies only when asked.
function renderEvidence(holder, m) {
  const bodies = h('input', { id: 'evidence-bodies', type: 'checkbox' });
  const status = h('p', { class: 'muted', role: 'status' });
  const button = h('button', { type: 'button', class: 'primary', onclick: async () => {
    status.textContent = 'Exporting…';
    try {
      const query = bodies.checked ? '?body=true' : '';
      const name = await save(`/api/messages/${encodeURIComponent(m.id)}/evidence${query}`);
      status.textContent = `Downloaded ${name}.`;
    } catch (error) {
      status.textContent = error.message;
    }
  } }, 'Download evidence package');
  append(holder, h('section', { class: 'card evidence' }, h('h2', {}, 'Evidence'),
    h('div', { class: 'field' }, bodies, h('label', { for: 'evidence-bodies' }, ' disclose the bodies in it')),
    button, status));
}

// The requester's word on its own request: the information asked for, proceed despite a
// risk notice, withdraw it, or release the data preserved.
async function renderFollowUp(holder, m, reload) {
  const described = await describedTypes();
  const status = h('p', { class: 'muted', role: 'status' });
  const form = new Form();
  const fields = record(described.follow_up, 'body', form, { omit: ['follows'] });
  const element = h('form', { class: 'card follow-up', novalidate: true }, h('h2', {}, 'Follow up'), form.summary, fields.el,
    h('button', { type: 'submit', class: 'primary' }, 'Send the follow-up'));
  element.addEventListener('submit', async (event) => {
    event.preventDefault();
    const errors = [];
    fields.check(errors);
    if (errors.length) return form.showErrors(errors);
    try {
      await api(`/api/messages/${encodeURIComponent(m.id)}/follow-up`, { method: 'POST', body: fields.read() ?? {} });
      status.textContent = 'Follow-up sent.';
      await reload();
    } catch (error) {
      form.showServerError(underBody(error));
    }
  });
  append(holder, element, status);
}

// -- the node --------------------------------------------------------------------------

async function alertsPage() {
  const holder = h('div');
  page('Alerts', holder);
  const load = async () => {
    const { overdue, alerts } = await api('/api/alerts');
    const overdueRows = overdue.map((m) => h('tr', { class: 'overdue' },
      h('td', {}, badge(m.priority)), h('td', {}, h('a', { href: `#/message/${encodeURIComponent(m.id)}` }, label(m.type))),
      h('td', {}, m.box === 'in' ? `from ${m.peer}` : `to ${m.peer}`), h('td', {}, badge(m.state, 'state')),
      h('td', {}, m.overdue.join(', '))));
    const alertRows = alerts.map((a) => h('tr', {},
      h('td', {}, a.time), h('td', {}, a.alert.replace(/_/g, ' ')), h('td', {}, a.priority ? badge(a.priority) : ''),
      // An alert about the node itself (its roster) names no message and no peer.
      h('td', {}, a.message_id ? h('a', { href: `#/message/${encodeURIComponent(a.message_id)}` }, a.message_id.slice(-12)) : 'this node'),
      h('td', {}, a.peer || ''), h('td', {}, typeof a.detail === 'string' ? a.detail : brief(a.detail)),
      h('td', { 'data-phones': a.peer || '' }, desk(a.peer_phones || [], []))));
    clear(holder,
      h('h2', {}, 'Overdue now'),
      overdueRows.length ? table(['Priority', 'Type', 'Peer', 'State', 'Overdue'], overdueRows) : h('p', { class: 'muted' }, 'Nothing is overdue.'),
      h('h2', {}, 'Latest alerts'),
      alertRows.length ? table(['Time', 'Alert', 'Priority', 'Message', 'Peer', 'Detail', 'Call'], alertRows) : h('p', { class: 'muted' }, 'No alert raised.'));
  };
  current.refresh = load;
  await load();
}

// A date, or until the decision on the MLA request (Budapest 29(7)), which has none.
function preservedUntil(m) {
  if (m.preserved_until) return when(m.preserved_until).slice(0, 10);
  if (m.until_decision) return `the MLA decision (counted from ${when(m.until_decision).slice(0, 10)})`;
  return null;
}

async function preservationsPage() {
  const { preservations } = await api('/api/preservations');
  const rows = preservations.map((p) => h('tr', {},
    h('td', {}, preservedUntil(p)), h('td', {}, p.peer),
    h('td', {}, h('a', { href: `#/message/${encodeURIComponent(p.id)}` }, p.id.slice(-12))),
    h('td', {}, badge(p.state, 'state')), h('td', {}, p.overdue.length ? badge(p.overdue.join(', '), 'overdue') : '')));
  page('Preservations',
    h('p', { class: 'muted' }, 'Data the other side preserved for us, soonest to lapse first: send the extension or the MLA notice in time.'),
    rows.length ? table(['Preserved until', 'Country', 'Request', 'State', 'Warning'], rows) : h('p', { class: 'muted' }, 'No preservation open.'));
}

// A duty desk's telephone numbers as links a phone can dial, and the languages it speaks.
function desk(phones, languages) {
  const numbers = (phones || []).map((n) => h('a', { href: `tel:${n.replace(/[^0-9+]/g, '')}` }, n));
  const spoken = languages && languages.length ? ` (${languages.join(', ')})` : '';
  return numbers.length ? [numbers.flatMap((a, i) => (i ? [', ', a] : [a])), spoken] : '';
}

async function peersPage() {
  const holder = h('div');
  page('Peers', holder);
  const load = async () => {
    const { node, peers } = await api('/api/peers');
    const rows = peers.map((p) => h('tr', { 'data-peer': p.id },
      h('td', {}, p.id), h('td', {}, p.name), h('td', {}, badge(p.linked ? 'linked' : 'not linked', p.linked ? 'ok' : 'bad')),
      h('td', {}, p.status), h('td', {}, when(p.last_seen)), h('td', {}, String(p.queued)),
      h('td', {}, String(p.failures)), h('td', {}, p.last_error || ''),
      // Whom to call when the link is down: the duty desk's numbers and languages, from its card.
      h('td', { class: p.linked ? '' : 'call', 'data-phones': p.id }, desk(p.phones, p.languages))));
    clear(holder, h('p', { class: 'muted' }, `The contact points ${node} knows from the signed roster.`),
      table(['Id', 'Name', 'Link', 'Roster', 'Last seen', 'Queued', 'Failures', 'Last error', 'Duty desk by phone'], rows));
  };
  current.refresh = (event) => (event ? null : load());
  await load();
}

// -- finding earlier requests: "have we seen this identifier before?" (audited) ----------

async function searchPage() {
  const identifier = h('input', { id: 'search-identifier', type: 'text', maxlength: 2048, placeholder: 'an IP address, account, e-mail, URL, phone' });
  const caseRef = h('input', { id: 'search-case', type: 'text', maxlength: 200 });
  const country = h('input', { id: 'search-country', type: 'text', maxlength: 3, placeholder: 'DEU' });
  const results = h('div');
  const status = h('p', { class: 'muted', role: 'status' });
  const form = h('form', { class: 'filters card', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'search-identifier' }, 'Identifier'), identifier),
    h('div', { class: 'field' }, h('label', { for: 'search-case' }, 'Case reference'), caseRef),
    h('div', { class: 'field' }, h('label', { for: 'search-country' }, 'Country'), country),
    h('button', { type: 'submit', class: 'primary' }, 'Search'), status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    if (identifier.value.trim()) params.set('identifier', identifier.value.trim());
    if (caseRef.value.trim()) params.set('case', caseRef.value.trim());
    if (country.value.trim()) params.set('country', country.value.trim().toUpperCase());
    try {
      const { messages } = await api(`/api/search?${params}`);
      status.textContent = messages.length ? `${messages.length} found (this search is recorded in the audit log).` : 'Nothing found.';
      clear(results, messages.length
        ? table(['Priority', 'Type', 'Country', 'Case', 'Summary', 'State', 'Deadlines', 'Created', 'Held by', 'Id'], messageRows(messages), { class: 'messages found' })
        : null);
    } catch (error) {
      status.textContent = error.message;
    }
  });
  page('Search', h('p', { class: 'muted' }, 'Both boxes; an identifier is matched however it is written. Every search is audited.'), form, results);
}

// -- the administrator: accounts (tokens are issued by `cpn user add`, on the node) -------

async function accountsPage() {
  const holder = h('div');
  const trail = h('div');
  const status = h('p', { class: 'muted', role: 'status' });
  page('Accounts', holder, status, trail);
  const change = async (name, body) => {
    try {
      await api(`/api/users/${encodeURIComponent(name)}`, { method: 'POST', body });
      status.textContent = `${name} changed.`;
      await load();
    } catch (error) {
      status.textContent = error.message;
    }
  };
  const showTrail = async (name) => {
    const { entries } = await api(`/api/users/${encodeURIComponent(name)}/audit`);
    clear(trail, h('h2', {}, `Audit trail of ${name}`), entries.length
      ? table(['Time', 'Actor', 'Action', 'Message', 'Detail'], entries.map((e) => h('tr', {},
        h('td', {}, e.time_rfc3339 || ''), h('td', {}, e.actor), h('td', {}, e.action),
        h('td', { class: 'mono' }, e.message_id ? e.message_id.slice(-12) : ''), h('td', {}, brief(e.detail)))), { class: 'trail' })
      : h('p', { class: 'muted' }, 'Nothing recorded.'));
  };
  const showPasskeys = async (name) => {
    const { passkeys } = await api(`/api/users/${encodeURIComponent(name)}/passkeys`);
    clear(trail, h('h2', {}, `Passkeys of ${name}`), passkeys.length
      ? table(['Label', 'Registered', 'Last used', ''], passkeys.map((k) => h('tr', { 'data-passkey': k.id },
        h('td', {}, k.label), h('td', {}, when(k.created)), h('td', {}, when(k.last_used)),
        h('td', {}, h('button', { type: 'button', onclick: async () => {
          try {
            await api(`/api/users/${encodeURIComponent(name)}/passkeys/${encodeURIComponent(k.id)}/revoke`, { method: 'POST', body: {} });
            status.textContent = `${name}'s passkey ${k.label} revoked.`;
            await showPasskeys(name);
          } catch (error) {
            status.textContent = error.message;
          }
        } }, 'Revoke')))), { class: 'passkeys' })
      : h('p', { class: 'muted' }, 'No passkey.'));
  };
  const load = async () => {
    const { users } = await api('/api/users');
    const rows = users.map((u) => {
      const role = h('select', { 'aria-label': `role of ${u.name}` },
        ['officer', 'approver', 'auditor', 'admin'].map((r) => h('option', { value: r, selected: r === u.role }, r)));
      role.addEventListener('change', () => change(u.name, { role: role.value }));
      return h('tr', { 'data-user': u.name },
        h('td', {}, u.name), h('td', {}, role), h('td', {}, when(u.created)),
        h('td', {}, badge(u.disabled ? 'disabled' : 'enabled', u.disabled ? 'bad' : 'ok')),
        h('td', {}, h('button', { type: 'button', onclick: () => change(u.name, { disabled: !u.disabled }) }, u.disabled ? 'Enable' : 'Disable'),
          ' ', h('button', { type: 'button', onclick: () => showTrail(u.name) }, 'Audit trail'),
          ' ', h('button', { type: 'button', onclick: () => showPasskeys(u.name) }, 'Passkeys')));
    });
    clear(holder, h('p', { class: 'muted' }, 'New accounts: cpn user add NAME --role ROLE on the node prints the person\'s enrolment link (--token: a machine\'s token).'),
      table(['Name', 'Role', 'Since', 'Status', ''], rows, { class: 'accounts' }));
  };
  await load();
}

// -- the year's statistics (officers and auditors) ----------------------------------------

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children.flat(Infinity)) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

/** Horizontal bars, sent and received side by side, for each key of a figure. */
function bars(title, sent, received) {
  const keys = [...new Set([...Object.keys(sent), ...Object.keys(received)])].sort();
  const most = Math.max(1, ...keys.map((k) => Math.max(sent[k] || 0, received[k] || 0)));
  const row = 26;
  const width = 560;
  const left = 150;
  const scale = (n) => ((width - left - 60) * n) / most;
  const chart = svg('svg', { class: 'chart', role: 'img', 'aria-label': title, width, height: keys.length * row + 24, viewBox: `0 0 ${width} ${keys.length * row + 24}` },
    keys.map((key, i) => {
      const y = i * row;
      return [
        svg('text', { x: 0, y: y + 16, class: 'label' }, label(key)),
        svg('rect', { x: left, y: y + 3, width: scale(sent[key] || 0), height: 9, class: 'sent' }),
        svg('rect', { x: left, y: y + 13, width: scale(received[key] || 0), height: 9, class: 'received' }),
        svg('text', { x: left + scale(Math.max(sent[key] || 0, received[key] || 0)) + 6, y: y + 16, class: 'value' },
          `${sent[key] || 0} / ${received[key] || 0}`),
      ];
    }),
    svg('text', { x: left, y: keys.length * row + 18, class: 'legend' }, 'upper bar: sent, lower bar: received'));
  return h('section', { class: 'card', 'data-figure': title }, h('h2', {}, title), keys.length ? chart : h('p', { class: 'muted' }, 'None.'));
}

function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  if (ms < 172_800_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${(ms / 86_400_000).toFixed(1)} d`;
}

async function statisticsPage() {
  const holder = h('div');
  const year = h('input', { id: 'stats-year', type: 'number', min: 2000, max: 9999, value: new Date().getUTCFullYear() });
  const status = h('p', { class: 'muted', role: 'status' });
  const load = async () => {
    const stats = await api(`/api/statistics?year=${encodeURIComponent(year.value)}`);
    const { sent, received } = stats;
    const timeRows = ['receipt', 'acknowledgement', 'response'].flatMap((step) => [['sent', sent], ['received', received]]
      .filter(([, side]) => side.times[step])
      .map(([name, side]) => h('tr', { 'data-time': `${name}-${step}` }, h('td', {}, `${name}: to ${step}`),
        h('td', {}, String(side.times[step].count)), h('td', {}, duration(side.times[step].median_ms)),
        h('td', {}, duration(side.times[step].p90_ms)))));
    clear(holder,
      h('p', { 'data-totals': '' }, `${stats.node}, ${stats.year}: ${sent.requests} requests sent, ${received.requests} received;`
        + ` ${sent.extensions + received.extensions} extensions, ${sent.mla_notices + received.mla_notices} MLA notices.`),
      bars('Requests by type', sent.by_type, received.by_type),
      bars('Requests by country', sent.by_country, received.by_country),
      bars('Requests by priority', sent.by_priority, received.by_priority),
      h('section', { class: 'card' }, h('h2', {}, 'Times (from the request’s creation)'),
        table(['Step', 'Count', 'Median', '90th percentile'], timeRows)),
      bars('Preservation outcomes', sent.preservation_outcomes, received.preservation_outcomes),
      bars('Refusals by ground', sent.refusals_by_ground, received.refusals_by_ground));
  };
  const csvButton = h('button', { type: 'button', onclick: async () => {
    try {
      const name = await save(`/api/statistics?year=${encodeURIComponent(year.value)}&format=csv`);
      status.textContent = `Downloaded ${name}.`;
    } catch (error) {
      status.textContent = error.message;
    }
  } }, 'Download CSV');
  const form = h('form', { class: 'filters', novalidate: true }, h('label', { for: 'stats-year' }, 'Year '), year,
    h('button', { type: 'submit', class: 'primary' }, 'Show'), csvButton, status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      await load();
    } catch (error) {
      status.textContent = error.message;
    }
  });
  page('Statistics', form, holder);
  await load();
}

// -- the auditor ------------------------------------------------------------------------

const FILTERS = [['since', 'Since', '2026-11-18T00:00:00Z'], ['until', 'Until', '2026-11-19T00:00:00Z'],
  ['message', 'Message id', ''], ['actor', 'Actor', 'e.g. node:DEU'], ['action', 'Action', 'e.g. received']];

async function auditPage() {
  const form = new Form();
  const inputs = {};
  const fields = FILTERS.map(([name, text, hint]) => {
    const input = h('input', { id: `filter-${name}`, name, type: 'text', placeholder: hint, autocomplete: 'off' });
    inputs[name] = input;
    const error = h('span', { class: 'error', 'data-error-for': name });
    form.slot(name, error);
    return h('div', { class: 'field' }, h('label', { for: input.id }, text), input, error);
  });
  const query = () => {
    const params = new URLSearchParams();
    for (const [name, input] of Object.entries(inputs)) if (input.value.trim()) params.set(name, input.value.trim());
    return params;
  };
  const results = h('div');
  const pager = h('div', { class: 'actions pager' });
  const cursors = [0]; // `after` of each page seen
  const load = async (after) => {
    const params = query();
    params.set('limit', '50');
    if (after) params.set('after', String(after));
    let answer;
    try {
      answer = await api(`/api/audit?${params}`);
    } catch (error) {
      form.showServerError(error);
      return;
    }
    form.clearErrors();
    const rows = answer.entries.map((e) => h('tr', { 'data-seq': e.seq },
      h('td', {}, String(e.seq)), h('td', {}, e.time_rfc3339), h('td', {}, e.actor), h('td', {}, e.action),
      h('td', { class: 'mono' }, e.message_id ? e.message_id.slice(-12) : ''),
      h('td', { class: 'detail' }, JSON.stringify(e.detail))));
    clear(results, rows.length
      ? table(['Seq', 'Time', 'Actor', 'Action', 'Message', 'Detail'], rows, { class: 'audit' })
      : h('p', { class: 'muted' }, 'No entry matches.'));
    const pageNo = cursors.indexOf(after);
    clear(pager,
      h('button', { type: 'button', class: 'quiet', disabled: pageNo <= 0, onclick: () => load(cursors[pageNo - 1]) }, '← Previous'),
      h('span', { class: 'muted' }, `page ${pageNo + 1}`),
      h('button', { type: 'button', class: 'quiet', disabled: answer.next === null, onclick: () => {
        if (!cursors.includes(answer.next)) cursors.push(answer.next);
        load(answer.next);
      } }, 'Next →'));
  };
  const filters = h('form', { class: 'card filters', novalidate: true }, form.summary, h('div', { class: 'row' }, fields),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Filter'),
      h('button', { type: 'reset', class: 'quiet' }, 'Clear')));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    cursors.splice(1);
    load(0);
  });
  filters.addEventListener('reset', () => setTimeout(() => { cursors.splice(1); load(0); }));

  const verdict = h('div', { class: 'verdict', role: 'status' });
  const verify = h('button', { type: 'button', class: 'primary', onclick: async () => {
    verify.disabled = true;
    clear(verdict, h('p', { class: 'muted' }, 'Verifying the whole log…'));
    try {
      showVerdict(verdict, await api('/api/audit/verify'));
    } catch (error) {
      clear(verdict, h('p', { class: 'error' }, error.message));
    } finally {
      verify.disabled = false;
    }
  } }, 'Run the verification');

  const format = h('select', { id: 'export-format' }, h('option', { value: 'jsonl' }, 'JSONL (entries and signed checkpoints)'),
    h('option', { value: 'csv' }, 'CSV (entries)'));
  const exported = h('span', { class: 'muted', role: 'status' });
  const exportButton = h('button', { type: 'button', class: 'primary', onclick: async () => {
    const params = query();
    params.set('format', format.value);
    exported.textContent = 'Exporting…';
    try {
      const name = await save(`/api/audit/export?${params}`);
      exported.textContent = `Downloaded ${name}.`;
    } catch (error) {
      exported.textContent = '';
      form.showServerError(error);
    }
  } }, 'Download the export');

  page('Audit log', filters, results, pager,
    h('div', { class: 'row' },
      h('section', { class: 'card' }, h('h2', {}, 'Verification'),
        h('p', { class: 'muted' }, 'Recomputes the Merkle tree, checks every signed checkpoint, cosignature, envelope and receipt.'),
        verify, verdict),
      h('section', { class: 'card' }, h('h2', {}, 'Export'),
        h('p', { class: 'muted' }, 'The entries matching the filters above, each with its leaf hash.'),
        h('div', { class: 'field' }, h('label', { for: 'export-format' }, 'Format'), format),
        h('div', { class: 'actions' }, exportButton, exported))));
  await load(0);
}

function showVerdict(holder, report) {
  const counts = ['entries', 'checkpoints', 'cosignatures', 'envelopes', 'receipts', 'witnessed']
    .map((key) => [h('dt', {}, label(key)), h('dd', {}, String(report[key]))]);
  const first = report.first_problem;
  clear(holder,
    h('p', { class: report.ok ? 'ok' : 'bad', 'data-ok': String(report.ok) },
      report.ok ? `The log of ${report.node} holds: every check passed.` : `${report.problem_count} problem(s) found.`),
    first ? h('p', { class: 'error' }, brief(first)) : null,
    h('dl', { class: 'facts' }, counts),
    report.warnings.length ? h('ul', { class: 'warnings' }, report.warnings.map((w) => h('li', {}, w))) : null);
}
