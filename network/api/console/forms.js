// Forms built from the node's description of the message bodies (GET /api/types, made by
// network/bodies.py from the same records that validate them): one definition, not two.
// Each input is named by the field's path as the server names it in errors
// (`body.data.identifiers[0].timestamp`), so an error from the server lands beside its field.

import { h, label, clear } from './dom.js';

let serial = 0;

export class Form {
  constructor() {
    this.slots = new Map(); // path -> the element showing that field's error
    this.summary = h('div', { class: 'form-errors', role: 'alert', hidden: true });
  }

  slot(path, el) {
    this.slots.set(path, el);
  }

  clearErrors() {
    for (const slot of this.slots.values()) {
      slot.textContent = '';
      slot.closest('.field')?.classList.remove('invalid');
    }
    clear(this.summary);
    this.summary.hidden = true;
  }

  /** Show `[path, problem]` pairs beside their fields and as a list on top. */
  showErrors(errors, heading = 'Not sent: fix these fields first.') {
    this.clearErrors();
    const items = [];
    for (const [path, problem] of errors) {
      let at = path;
      while (at && !this.slots.has(at)) at = parent(at);
      const slot = this.slots.get(at);
      if (slot) {
        slot.textContent = at === path ? problem : `${path}: ${problem}`;
        slot.closest('.field')?.classList.add('invalid');
      }
      items.push(h('li', {}, h('code', {}, path || 'request'), ' — ', problem));
    }
    clear(this.summary, h('strong', {}, heading), h('ul', {}, items));
    this.summary.hidden = false;
    const first = this.summary.parentElement?.querySelector('.invalid input, .invalid select, .invalid textarea');
    first?.focus();
  }

  /** An error answer from the node: beside the field it names, or on top. */
  showServerError(error) {
    const field = error.field || '';
    const problem = field && error.message.startsWith(`${field}: `)
      ? error.message.slice(field.length + 2)
      : error.message;
    this.showErrors([[field, problem]], 'The node refused it:');
  }
}

function parent(path) {
  const cut = Math.max(path.lastIndexOf('.'), path.lastIndexOf('['));
  return cut > 0 ? path.slice(0, cut) : '';
}

function join(path, name) {
  return path ? `${path}.${name}` : name;
}

/** A control for one described field: `{el, read(), check(errors), setActive, setRequired, listen}`. */
export function control(field, path, form) {
  if (field.kind === 'record') {
    return record(field, path, form, { legend: label(field.name), required: field.required });
  }
  if (field.kind === 'list') {
    return field.items.kind === 'choice' && field.unique
      ? checkboxes(field, path, form)
      : list(field, path, form);
  }
  return leaf(field, path, form);
}

/** A record's fields, with its cross-field rules (a field shown or required by another). */
export function record(desc, path, form, { legend = null, omit = [], required = true } = {}) {
  const children = new Map();
  const el = legend
    ? h('fieldset', { class: 'record', 'data-path': path }, h('legend', {}, legend))
    : h('div', { class: 'record', 'data-path': path });
  for (const field of desc.fields) {
    if (omit.includes(field.name)) continue;
    const child = control(field, join(path, field.name), form);
    children.set(field.name, child);
    el.append(child.el);
  }
  for (const rule of desc.rules) {
    const on = children.get(rule.on);
    const target = children.get(rule.name);
    if (!on || !target) continue;
    const apply = () => {
      const hit = rule.values.includes(on.read());
      target.setActive(hit || !rule.only);
      target.setRequired((hit && rule.required) || target.baseRequired);
    };
    on.listen(apply);
    apply();
  }
  return {
    el,
    active: true,
    required,
    baseRequired: required,
    read() {
      const out = {};
      for (const [name, child] of children) {
        if (!child.active) continue;
        const value = child.read();
        if (value !== undefined) out[name] = value;
      }
      return Object.keys(out).length ? out : undefined;
    },
    check(errors) {
      if (!this.active || (!this.required && this.read() === undefined)) return;
      for (const child of children.values()) child.check(errors);
    },
    setActive(on) {
      this.active = on;
      el.hidden = !on;
    },
    setRequired(on) {
      this.required = on;
    },
    listen(callback) {
      el.addEventListener('change', callback);
    },
    children,
  };
}

function wrap(field, path, form, input, id) {
  const error = h('span', { class: 'error', id: `${id}-error`, 'data-error-for': path });
  form.slot(path, error);
  const hint = field.format ? h('span', { class: 'hint' }, FORMATS[field.format] || field.format) : null;
  return h(
    'div',
    { class: `field field-${field.kind}`, 'data-field': path },
    h('label', { for: id }, label(field.name)),
    input,
    hint,
    error,
  );
}

const FORMATS = {
  email: 'e-mail address',
  date: 'date (YYYY-MM-DD)',
  'date-time': 'date and time with zone, e.g. 2026-11-20T14:03:00Z',
  'message-id': 'message id (UUID)',
  'time-zone': 'IANA time zone, e.g. Europe/Paris',
  language: 'language tag, e.g. en, fr, pt-BR',
};

function leaf(field, path, form) {
  const id = `f${++serial}`;
  let input;
  if (field.kind === 'text') {
    input = h('textarea', { id, rows: 3, maxlength: field.max_length });
  } else if (field.kind === 'choice' || field.kind === 'boolean') {
    const choices = field.kind === 'boolean' ? [['true', 'yes'], ['false', 'no']] : field.choices.map((c) => [c, label(c)]);
    input = h('select', { id }, h('option', { value: '' }, '— choose —'),
      choices.map(([value, text]) => h('option', { value }, text)));
  } else if (field.kind === 'integer') {
    input = h('input', { id, type: 'number', min: field.min, max: field.max, step: 1 });
  } else {
    const type = field.format === 'date' ? 'date' : field.format === 'email' ? 'email' : 'text';
    input = h('input', { id, type, maxlength: field.max_length, autocomplete: 'off' });
  }
  input.name = path;
  input.dataset.path = path;
  input.setAttribute('aria-describedby', `${id}-error`);
  const el = wrap(field, path, form, input, id);
  const self = {
    el,
    input,
    active: true,
    required: field.required,
    baseRequired: field.required,
    read() {
      const raw = input.value;
      if (field.kind === 'boolean') return raw === '' ? undefined : raw === 'true';
      if (field.kind === 'integer') return raw.trim() === '' ? undefined : Number(raw);
      return raw.trim() === '' ? undefined : raw;
    },
    check(errors) {
      if (!this.active) return;
      const value = this.read();
      if (value === undefined) {
        if (this.required) errors.push([path, 'required field is missing']);
      } else if (field.kind === 'integer') {
        if (!Number.isInteger(value)) errors.push([path, 'must be a whole number']);
        else if (value < field.min) errors.push([path, `must be at least ${field.min}`]);
        else if (value > field.max) errors.push([path, `must be at most ${field.max}`]);
      } else if (typeof value === 'string' && new TextEncoder().encode(value).length > field.max_length) {
        errors.push([path, `must be at most ${field.max_length} bytes in UTF-8`]);
      }
    },
    setActive(on) {
      this.active = on;
      el.hidden = !on;
    },
    setRequired(on) {
      this.required = on;
      el.classList.toggle('required', on);
    },
    listen(callback) {
      input.addEventListener('change', callback);
    },
  };
  self.setRequired(field.required);
  return self;
}

function checkboxes(field, path, form) {
  const id = `f${++serial}`;
  const boxes = field.items.choices.map((choice) =>
    h('label', { class: 'check' }, h('input', { type: 'checkbox', value: choice, 'data-path': `${path}:${choice}` }), label(choice)));
  const group = h('div', { class: 'checks', id, role: 'group' }, boxes);
  const el = wrap(field, path, form, group, id);
  el.classList.toggle('required', field.required);
  const self = {
    el,
    active: true,
    required: field.required,
    baseRequired: field.required,
    read() {
      const values = [...group.querySelectorAll('input:checked')].map((box) => box.value);
      return values.length ? values : undefined;
    },
    check(errors) {
      if (!this.active) return;
      const count = this.read()?.length ?? 0;
      if (count < field.min_items && (this.required || count)) {
        errors.push([path, `choose at least ${field.min_items}`]);
      }
    },
    setActive(on) { this.active = on; el.hidden = !on; },
    setRequired(on) { this.required = on; },
    listen(callback) { group.addEventListener('change', callback); },
  };
  return self;
}

function list(field, path, form) {
  const items = [];
  const holder = h('div', { class: 'items' });
  const error = h('span', { class: 'error', 'data-error-for': path });
  form.slot(path, error);
  const item = { ...field.items, required: true };
  const add = () => {
    const index = items.length;
    const one = control({ ...item, name: `${label(field.name)} ${index + 1}` }, `${path}[${index}]`, form);
    items.push(one);
    holder.append(one.el);
    remove.disabled = items.length <= Math.max(field.min_items, 0);
  };
  const drop = () => {
    const last = items.pop();
    last?.el.remove();
    remove.disabled = items.length <= Math.max(field.min_items, 0);
  };
  const more = h('button', { type: 'button', class: 'quiet', onclick: add }, `Add ${label(field.name).toLowerCase()}`);
  const remove = h('button', { type: 'button', class: 'quiet', onclick: drop }, 'Remove the last');
  const el = h('fieldset', { class: 'field list', 'data-field': path },
    h('legend', {}, label(field.name)), holder, h('div', { class: 'actions' }, more, remove), error);
  for (let i = 0; i < Math.max(field.min_items, 1); i++) add();
  return {
    el,
    active: true,
    required: field.required,
    baseRequired: field.required,
    read() {
      const values = items.map((one) => one.read()).filter((value) => value !== undefined);
      return values.length ? values : undefined;
    },
    check(errors) {
      if (!this.active) return;
      const filled = items.filter((one) => one.read() !== undefined);
      if (filled.length < field.min_items && (this.required || filled.length)) {
        // Name what the first items lack, where they are; else say how many are needed.
        const before = errors.length;
        for (const one of items.slice(0, field.min_items)) if (!filled.includes(one)) one.check(errors);
        if (errors.length === before) errors.push([path, `needs at least ${field.min_items}`]);
      }
      for (const one of filled) one.check(errors);
    },
    setActive(on) { this.active = on; el.hidden = !on; },
    setRequired(on) { this.required = on; },
    listen(callback) { el.addEventListener('change', callback); },
  };
}
