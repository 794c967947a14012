// Building the page: every piece of data goes in as a text node or an attribute value,
// never as HTML (no innerHTML anywhere), so a body holding markup shows as text.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A time in ms since the epoch, as UTC: 2026-11-20 14:03:00Z. */
export function when(ms) {
  if (typeof ms !== 'number') return '—';
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z';
}

/** `period_days` -> `Period days`. */
export function label(name) {
  const text = name.replace(/_/g, ' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export const RANK = { flash: 0, urgent: 1, routine: 2 };

/** Most urgent first, then newest. */
export function byUrgency(a, b) {
  return (RANK[a.priority] ?? 9) - (RANK[b.priority] ?? 9) || b.created - a.created;
}

export function badge(text, kind = text) {
  return h('span', { class: `badge badge-${kind}` }, text);
}

/** A JSON value as a definition list (records), a list (arrays) or text. */
export function show(value) {
  if (Array.isArray(value)) {
    return h('ol', { class: 'values' }, value.map((item) => h('li', {}, show(item))));
  }
  if (value !== null && typeof value === 'object') {
    const list = h('dl', { class: 'record' });
    for (const [key, item] of Object.entries(value)) {
      list.append(h('dt', {}, label(key)), h('dd', {}, show(item)));
    }
    return list;
  }
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  return h('span', { class: 'value' }, value === null ? '—' : String(value));
}

/** A short one-line text of a timeline or audit detail. */
export function brief(detail) {
  if (!detail || typeof detail !== 'object') return '';
  return Object.entries(detail)
    .map(([key, value]) => `${key}: ${typeof value === 'object' ? JSON.stringify(value) : value}`)
    .join(' · ');
}

export function table(headings, rows, attrs = {}) {
  return h(
    'table',
    attrs,
    h('thead', {}, h('tr', {}, headings.map((text) => h('th', {}, text)))),
    h('tbody', {}, rows),
  );
}
