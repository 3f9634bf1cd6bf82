// rtcrm console: talks to the HTTP API of the process that serves it (see host/src/api.rs).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  };

  const ui = {
    ready: $('ready'), feedStatus: $('feed-status'), tokenBox: $('token-box'), token: $('token'),
    campaignJson: $('campaign-json'), campaignJsonStatus: $('campaign-json-status'),
    filter: $('filter'), gutter: $('filter-gutter'), backdrop: $('filter-backdrop'), filterEditor: $('filter-editor'),
    compileStatus: $('compile-status'), campaignResult: $('campaign-result'),
    campaignExample: $('campaign-example'), campaignSend: $('campaign-send'),
    eventJson: $('event-json'), eventJsonStatus: $('event-json-status'), eventResult: $('event-result'),
    eventExample: $('event-example'), eventSend: $('event-send'),
    feed: $('feed'), feedEmpty: $('feed-empty'), feedClear: $('feed-clear'),
    table: document.querySelector('#campaigns tbody'), tableEmpty: $('campaigns-empty'), campaignsNote: $('campaigns-note'),
    toasts: $('toasts'),
  };

  // ------------------------------------------------------------------------------------------
  // HTTP

  let authRequired = false;
  try { ui.token.value = sessionStorage.getItem('rtcrm-token') || ''; } catch (_) { /* storage may be off */ }
  ui.tokenBox.addEventListener('submit', (e) => e.preventDefault());
  ui.token.addEventListener('input', () => {
    try { sessionStorage.setItem('rtcrm-token', ui.token.value); } catch (_) { /* ignore */ }
    if (compileState === 'error') scheduleCompile();
  });

  /** fetch, returning {status, body} with the body parsed as JSON when it is JSON. Never throws
   *  for an HTTP status; throws for a network failure. */
  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (method !== 'GET' && ui.token.value.trim()) headers.Authorization = 'Bearer ' + ui.token.value.trim();
    const response = await fetch(path, { method, headers, body, cache: 'no-store' });
    const text = await response.text();
    let parsed = text;
    try { parsed = JSON.parse(text); } catch (_) { /* not JSON */ }
    return { status: response.status, ok: response.ok, body: parsed };
  }

  const errorText = (r) => (r.body && typeof r.body === 'object' && r.body.error) ? r.body.error : `HTTP ${r.status}`;

  function setResult(node, cls, text) {
    node.className = node.className.replace(/\b(ok|bad|pending)\b/g, '').trim() + (cls ? ' ' + cls : '');
    node.textContent = text;
  }

  // ------------------------------------------------------------------------------------------
  // Server information, readiness

  let examples = null;
  async function loadExamples() {
    if (!examples) {
      const r = await api('GET', '/api/examples');
      if (!r.ok) throw new Error(errorText(r));
      examples = r.body;
    }
    return examples;
  }

  async function refreshInfo() {
    try {
      const r = await api('GET', '/api/info');
      if (!r.ok) return;
      const info = r.body;
      authRequired = info.auth_required;
      ui.tokenBox.hidden = !authRequired;
      for (const node of document.querySelectorAll('[data-topic]')) {
        const name = info.topics[node.dataset.topic];
        if (name) node.textContent = name;
      }
      ui.ready.textContent = info.ready ? 'ready' : 'not ready: ' + info.ready_reason;
      ui.ready.className = 'pill ' + (info.ready ? 'ok' : 'bad');
      ui.ready.title = `rtcrm ${info.version} · ${info.instance} · Kafka ${info.bootstrap_servers}`;
    } catch (_) {
      ui.ready.textContent = 'unreachable';
      ui.ready.className = 'pill bad';
    }
  }

  // ------------------------------------------------------------------------------------------
  // Campaign editor: the campaign JSON and its filter, kept in step; the filter compiles as you type

  let campaignObject = null;   // the parsed campaign JSON, or null while it does not parse
  let compileState = 'none';   // none | pending | ok | error
  let compileSeq = 0;
  let compileTimer = 0;
  let compileError = null;     // {message, line, column}
  let sendingCampaign = false;

  function updateCampaignSend() {
    updateEstimate();
    if (wasmMode) {
      // A Wasm campaign is sent as it is (the API validates the module); one shown from the
      // table carries only its module's digest, so it cannot be sent from here.
      ui.campaignSend.disabled = sendingCampaign || !campaignObject || wasmMode !== 'module';
      ui.campaignSend.title = wasmMode === 'digest' ? WASM_RESUBMIT : '';
      return;
    }
    ui.campaignSend.disabled = sendingCampaign || !campaignObject || compileState !== 'ok';
    ui.campaignSend.title = !campaignObject ? 'the campaign JSON does not parse'
      : compileState === 'error' ? 'the filter does not compile'
        : compileState === 'pending' ? 'compiling the filter…' : '';
  }

  // ------------------------------------------------------------------------------------------
  // WebAssembly campaigns (filter_wasm): shown as such, never in the JavaScript editor

  const WASM_RESUBMIT = 'the module itself is not in the console: change and resubmit it with rtcrm campaign put CAMPAIGN.json --wasm FILTER.wasm';
  let wasmMode = null;         // null (a JavaScript campaign) | 'module' (filter_wasm) | 'digest' (filter_wasm_sha256 only)
  const wasmNote = el('div', { id: 'wasm-note', class: 'wasm-note', role: 'status', hidden: '' });
  ui.filterEditor.after(wasmNote);

  /** The campaign's Wasm kind: 'module', 'digest' or null (JavaScript). */
  function wasmKind(campaign) {
    if (typeof campaign.filter_wasm === 'string') return 'module';
    if (typeof campaign.filter_wasm_sha256 === 'string') return 'digest';
    return null;
  }

  /** Shows (or hides) the Wasm note in place of the JavaScript editor. */
  function setWasmMode(campaign) {
    wasmMode = campaign ? wasmKind(campaign) : null;
    const filterLabel = document.querySelector('label[for="filter"]');
    ui.filterEditor.hidden = wasmMode !== null;
    if (filterLabel) filterLabel.hidden = wasmMode !== null;
    wasmNote.hidden = wasmMode === null;
    if (wasmMode === null) return;
    clearTimeout(compileTimer);
    compileSeq++;
    // Nothing to compile here; a module can be estimated and sent as it is.
    compileState = wasmMode === 'module' ? 'ok' : 'none';
    compileError = null;
    const digest = campaign.filter_wasm_sha256;
    const size = wasmMode === 'module' ? Math.floor(campaign.filter_wasm.length * 3 / 4) : null;
    wasmNote.replaceChildren(
      el('strong', { text: 'WebAssembly filter' }),
      el('span', { text: wasmMode === 'module' ? ` · a module of about ${size.toLocaleString()} bytes, checked by rtcrm when sent` : ` · sha256 ${digest}` }),
      el('div', { class: 'note', text: wasmMode === 'module' ? 'The console edits JavaScript filters only; the module is sent as it is.' : WASM_RESUBMIT }));
    setResult(ui.compileStatus, '', '');
  }

  function onCampaignJsonInput() {
    const text = ui.campaignJson.value;
    if (!text.trim()) {
      campaignObject = null;
      ui.campaignJson.removeAttribute('aria-invalid');
      setResult(ui.campaignJsonStatus, '', '');
      updatePreview();
      updateCampaignSend();
      return;
    }
    try {
      const value = JSON.parse(text);
      if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('the campaign must be a JSON object');
      campaignObject = value;
      ui.campaignJson.removeAttribute('aria-invalid');
      setResult(ui.campaignJsonStatus, '', '');
      fillControls(value);
      updatePreview();
      setWasmMode(wasmKind(value) ? value : null);
      if (wasmMode) { updateCampaignSend(); return; }
      const source = typeof value.filter === 'string' ? value.filter : '';
      if (source !== ui.filter.value) {
        ui.filter.value = source;
        renderFilter();
      }
      scheduleCompile();
    } catch (e) {
      campaignObject = null;
      ui.campaignJson.setAttribute('aria-invalid', 'true');
      setResult(ui.campaignJsonStatus, 'bad', text.trim() ? 'campaign JSON: ' + e.message : '');
    }
    updatePreview();
    updateCampaignSend();
  }

  function onFilterInput() {
    renderFilter();
    if (campaignObject) {
      campaignObject.filter = ui.filter.value;
      ui.campaignJson.value = JSON.stringify(campaignObject, null, 2);
    }
    scheduleCompile();
    updateCampaignSend();
  }

  function scheduleCompile() {
    clearTimeout(compileTimer);
    compileState = 'pending';
    const seq = ++compileSeq;
    setResult(ui.compileStatus, 'pending', 'compiling…');
    updateCampaignSend();
    compileTimer = setTimeout(() => compileNow(seq), 250);
  }

  async function compileNow(seq) {
    let state, error = null;
    try {
      const r = await api('POST', '/api/compile', JSON.stringify({ source: ui.filter.value }));
      if (seq !== compileSeq) return;
      if (r.ok && r.body.ok) state = 'ok';
      else if (r.ok) { state = 'error'; error = r.body.error; }
      else { state = 'error'; error = { message: errorText(r), line: null, column: null }; }
    } catch (e) {
      if (seq !== compileSeq) return;
      state = 'error';
      error = { message: 'cannot reach rtcrm: ' + e.message, line: null, column: null };
    }
    compileState = state;
    compileError = error;
    if (state === 'ok') setResult(ui.compileStatus, 'ok', '✓ the filter compiles');
    else if (error.line != null) setResult(ui.compileStatus, 'bad', `line ${error.line}, column ${error.column}: ${error.message}`);
    else setResult(ui.compileStatus, 'bad', error.message);
    renderFilter();
    updateCampaignSend();
  }

  /** Line numbers, and the error line and column marked behind the text. */
  function renderFilter() {
    const lines = ui.filter.value.split('\n');
    const errLine = compileState === 'error' && compileError && compileError.line != null ? compileError.line : null;
    ui.gutter.replaceChildren(...lines.map((_, i) => el('div', { class: i + 1 === errLine ? 'err' : '', text: String(i + 1) })));
    ui.backdrop.replaceChildren(...lines.map((line, i) => {
      const span = el('span', { class: i + 1 === errLine ? 'err-line' : '' });
      if (i + 1 === errLine) {
        const col = Math.max(0, Math.min((compileError.column || 1) - 1, line.length));
        span.append(line.slice(0, col), el('mark', { text: line.slice(col, col + 1) || ' ' }), line.slice(col + 1));
      } else {
        span.textContent = line;
      }
      return [span, '\n'];
    }).flat());
    ui.filterEditor.classList.toggle('invalid', errLine != null || (compileState === 'error'));
    ui.filter.setAttribute('aria-invalid', compileState === 'error' ? 'true' : 'false');
    syncScroll();
  }

  function syncScroll() {
    ui.backdrop.scrollTop = ui.filter.scrollTop;
    ui.backdrop.scrollLeft = ui.filter.scrollLeft;
    ui.gutter.scrollTop = ui.filter.scrollTop;
  }

  async function sendCampaign() {
    if (ui.campaignSend.disabled) return;
    sendingCampaign = true;
    updateCampaignSend();
    setResult(ui.campaignResult, 'pending', 'sending…');
    try {
      const r = await api('POST', '/api/campaigns', ui.campaignJson.value);
      if (r.ok) {
        setResult(ui.campaignResult, 'ok', `campaign ${r.body.campaign_id} sent to ${r.body.topic} (partition ${r.body.partition}, offset ${r.body.offset})`);
        refreshCampaigns();
      } else {
        setResult(ui.campaignResult, 'bad', 'not sent: ' + errorText(r));
      }
    } catch (e) {
      setResult(ui.campaignResult, 'bad', 'not sent: ' + e.message);
    } finally {
      sendingCampaign = false;
      updateCampaignSend();
    }
  }

  async function campaignExample() {
    try {
      const { campaign } = await loadExamples();
      ui.campaignJson.value = JSON.stringify(campaign, null, 2);
      setResult(ui.campaignResult, '', '');
      onCampaignJsonInput();
    } catch (e) {
      setResult(ui.campaignResult, 'bad', 'no example: ' + e.message);
    }
  }

  // An edit clears the last send's outcome (it described the previous text).
  ui.campaignJson.addEventListener('input', () => { setResult(ui.campaignResult, '', ''); onCampaignJsonInput(); });
  ui.filter.addEventListener('input', () => { setResult(ui.campaignResult, '', ''); onFilterInput(); });
  ui.filter.addEventListener('scroll', syncScroll);
  ui.filter.addEventListener('keydown', (e) => {
    // Tab indents instead of leaving the editor.
    if (e.key === 'Tab' && !e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey) {
      e.preventDefault();
      ui.filter.setRangeText('  ', ui.filter.selectionStart, ui.filter.selectionEnd, 'end');
      onFilterInput();
    }
  });
  ui.campaignExample.addEventListener('click', campaignExample);
  ui.campaignSend.addEventListener('click', sendCampaign);

  // ------------------------------------------------------------------------------------------
  // Per-player controls (spec §12): a form kept in step with the campaign JSON, and a live
  // one-line preview of what they mean (controls.js); an edit of one input changes only its field

  const controls = window.rtcrmControls;
  const ctl = {
    box: $('controls'), preview: $('controls-preview'),
    cooldown: $('ctl-cooldown'), cap: $('ctl-cap'), atLeast: $('ctl-count-at-least'), within: $('ctl-count-within'),
    inactivity: $('ctl-inactivity'), holdout: $('ctl-holdout'), variants: $('ctl-variants'), stateVersion: $('ctl-state-version'),
    state: $('ctl-state'), stateTtl: $('ctl-state-ttl'), stateMaxBytes: $('ctl-state-max-bytes'),
  };
  const jsonText = (v) => (v === undefined || v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v));
  const numberText = (v) => (v === undefined || v === null ? '' : String(v));

  /** A number if the text is one, else the text (the processor then says what is wrong). */
  function numberOrText(text) {
    const t = text.trim();
    if (t === '') return undefined;
    const n = Number(t);
    return Number.isFinite(n) ? n : t;
  }

  /** "A:1, B:3" (or "A, B": weight 1) as the campaign's `variants`. */
  function variantsFromText(text) {
    const items = text.split(/[,;]/).map((x) => x.trim()).filter(Boolean);
    if (!items.length) return undefined;
    return items.map((item) => {
      const i = item.lastIndexOf(':');
      if (i < 0) return { name: item, weight: 1 };
      return { name: item.slice(0, i).trim(), weight: numberOrText(item.slice(i + 1)) ?? 1 };
    });
  }

  function variantsText(v) {
    if (!Array.isArray(v)) return jsonText(v);
    return v.map((x) => (x && typeof x === 'object' ? `${x.name}:${x.weight}` : jsonText(x))).join(', ');
  }

  /** The form from a campaign object (inputs being typed in keep their text). */
  function fillControls(c) {
    const set = (input, text) => { if (document.activeElement !== input) input.value = text; };
    set(ctl.cooldown, jsonText(c.cooldown));
    set(ctl.cap, numberText(c.max_triggers_per_player));
    const count = c.count && typeof c.count === 'object' ? c.count : {};
    set(ctl.atLeast, numberText(count.at_least));
    set(ctl.within, jsonText(count.within));
    set(ctl.inactivity, jsonText(c.inactivity));
    set(ctl.holdout, numberText(c.holdout_percent));
    set(ctl.variants, variantsText(c.variants));
    set(ctl.stateVersion, numberText(c.state_version));
    const state = c.state && typeof c.state === 'object' ? c.state : null;
    ctl.state.checked = c.state !== undefined && c.state !== null;
    set(ctl.stateTtl, state ? jsonText(state.ttl) : '');
    set(ctl.stateMaxBytes, state ? numberText(state.max_bytes) : '');
  }

  /** The value of campaign field `field` the form gives (undefined: leave it out). */
  function formValue(field) {
    const text = (input) => input.value.trim() || undefined;
    switch (field) {
      case 'cooldown': return text(ctl.cooldown);
      case 'max_triggers_per_player': return numberOrText(ctl.cap.value);
      case 'count': {
        const atLeast = numberOrText(ctl.atLeast.value), within = text(ctl.within);
        return atLeast === undefined && within === undefined ? undefined : { at_least: atLeast ?? 1, within: within ?? '' };
      }
      case 'inactivity': return text(ctl.inactivity);
      case 'holdout_percent': return numberOrText(ctl.holdout.value);
      case 'variants': return variantsFromText(ctl.variants.value);
      case 'state_version': return numberOrText(ctl.stateVersion.value);
      case 'state': {
        if (!ctl.state.checked) return undefined;
        const state = {};
        const ttl = text(ctl.stateTtl), maxBytes = numberOrText(ctl.stateMaxBytes.value);
        if (ttl !== undefined) state.ttl = ttl;
        if (maxBytes !== undefined) state.max_bytes = maxBytes;
        return state;
      }
      default: return undefined;
    }
  }

  /** An input changed: its field folded into the campaign JSON (the other fields untouched). */
  function onControlInput(event) {
    const input = event.target;
    const field = input.dataset.field;
    if (!field) return;
    if ((input === ctl.stateTtl || input === ctl.stateMaxBytes) && input.value.trim()) ctl.state.checked = true;
    if (!campaignObject) {
      setResult(ctl.preview, 'bad', 'fix the campaign JSON first: the controls are folded into it');
      return;
    }
    const value = formValue(field);
    if (value === undefined) delete campaignObject[field];
    else campaignObject[field] = value;
    ui.campaignJson.value = JSON.stringify(campaignObject, null, 2);
    setResult(ui.campaignResult, '', '');
    updatePreview();
    updateCampaignSend();
  }

  /** The preview line: what the controls in the campaign JSON mean, or what is wrong with them. */
  function updatePreview() {
    if (!campaignObject) { setResult(ctl.preview, '', ''); return; }
    const { text, errors } = controls.describe(campaignObject);
    ctl.preview.dataset.errors = String(errors.length);
    setResult(ctl.preview, errors.length ? 'bad' : '', errors.length ? `${text} — ${errors.join('; ')}` : text);
    ctl.preview.title = ctl.preview.textContent;
  }

  ctl.box.addEventListener('input', onControlInput);
  ctl.box.addEventListener('change', (e) => { if (e.target === ctl.state) onControlInput(e); });

  // ------------------------------------------------------------------------------------------
  // Event editor

  let eventValid = false;
  let sendingEvent = false;

  function onEventInput() {
    const text = ui.eventJson.value;
    if (!text.trim()) {
      eventValid = false;
      ui.eventJson.removeAttribute('aria-invalid');
      setResult(ui.eventJsonStatus, '', '');
      ui.eventSend.disabled = true;
      return;
    }
    try {
      const value = JSON.parse(text);
      if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('an event must be a JSON object');
      eventValid = true;
      ui.eventJson.removeAttribute('aria-invalid');
      setResult(ui.eventJsonStatus, '', '');
    } catch (e) {
      eventValid = false;
      ui.eventJson.setAttribute('aria-invalid', 'true');
      setResult(ui.eventJsonStatus, 'bad', text.trim() ? 'event JSON: ' + e.message : '');
    }
    ui.eventSend.disabled = !eventValid || sendingEvent;
    updateExplain();
  }

  function newEventId() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  async function eventExample() {
    try {
      const { event } = await loadExamples();
      // A fresh event id each time, so each example event gives its own trigger id.
      const fresh = { ...event, event_id: newEventId() };
      ui.eventJson.value = JSON.stringify(fresh, null, 2);
      setResult(ui.eventResult, '', '');
      onEventInput();
    } catch (e) {
      setResult(ui.eventResult, 'bad', 'no example: ' + e.message);
    }
  }

  async function sendEvent() {
    if (ui.eventSend.disabled) return;
    sendingEvent = true;
    ui.eventSend.disabled = true;
    setResult(ui.eventResult, 'pending', 'sending…');
    try {
      const r = await api('POST', '/api/events', ui.eventJson.value);
      if (r.ok) setResult(ui.eventResult, 'ok', `event sent to ${r.body.topic} (partition ${r.body.partition}, offset ${r.body.offset})`);
      else setResult(ui.eventResult, 'bad', 'not sent: ' + errorText(r));
    } catch (e) {
      setResult(ui.eventResult, 'bad', 'not sent: ' + e.message);
    } finally {
      sendingEvent = false;
      onEventInput();
    }
  }

  ui.eventJson.addEventListener('input', () => { setResult(ui.eventResult, '', ''); onEventInput(); });
  ui.eventExample.addEventListener('click', eventExample);
  ui.eventSend.addEventListener('click', sendEvent);

  // ------------------------------------------------------------------------------------------
  // Live triggers

  const FEED_MAX = 200;
  const clock = (d) => d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const show = (v) => (v === undefined || v === null || v === '') ? '–' : String(v);

  /** A toast in the top bar's slot (it covers nothing): the newest replaces the one before. */
  function toast(text) {
    const node = el('div', { class: 'toast', role: 'status', text, title: text });
    ui.toasts.replaceChildren(node);
    setTimeout(() => { node.classList.add('bye'); setTimeout(() => node.remove(), 450); }, 6000);
  }

  const shownTriggers = new Set();   // trigger_id + triggered_at of the items in the feed

  /** A trigger the stream replays from before it opened (`event: recent`): in the feed, no toast. */
  function onRecentTrigger(message) { addTrigger(message, false); }

  function onTrigger(message) { addTrigger(message, true); }

  function addTrigger(message, live) {
    let trigger;
    try { trigger = JSON.parse(message.data); } catch (_) { return; }
    const key = `${trigger.trigger_id}|${trigger.triggered_at}`;
    if (shownTriggers.has(key)) return;
    shownTriggers.add(key);
    const c = trigger.campaign || {};
    const e = trigger.event || {};
    const at = trigger.triggered_at ? new Date(trigger.triggered_at) : new Date();
    const item = el('li', { dataset: { campaign: String(c.campaign_id), trigger: show(trigger.trigger_id) } },
      el('div', { class: 'line1' },
        el('span', { text: `campaign ${show(c.campaign_id)} → player ${show(e.player_id)}` }),
        el('time', { datetime: at.toISOString(), text: clock(at) })),
      el('div', { class: 'line2', text: `game ${show(e.game)} · market ${show(e.market)} · ${show(e.event_name)} · ${show(trigger.trigger_id)}` }),
      el('details', {}, el('summary', { text: 'trigger JSON' }), el('pre', { text: JSON.stringify(trigger, null, 2) })));
    ui.feed.prepend(item);
    while (ui.feed.children.length > FEED_MAX) ui.feed.lastElementChild.remove();
    ui.feedEmpty.hidden = true;
    if (!live) item.classList.add('recent');
    if (live) toast(`campaign ${show(c.campaign_id)} triggered for player ${show(e.player_id)} in game ${show(e.game)}, market ${show(e.market)}`);
  }

  function connectFeed() {
    const source = new EventSource('/api/triggers/stream');
    source.addEventListener('open', () => { ui.feedStatus.textContent = 'feed: live'; ui.feedStatus.className = 'pill ok'; });
    source.addEventListener('message', onTrigger);
    source.addEventListener('recent', onRecentTrigger);
    source.addEventListener('lagged', (m) => toast(`the feed skipped ${m.data} triggers (too many to show)`));
    source.addEventListener('error', () => { ui.feedStatus.textContent = 'feed: reconnecting…'; ui.feedStatus.className = 'pill bad'; });
  }

  ui.feedClear.addEventListener('click', () => { ui.feed.replaceChildren(); ui.feedEmpty.hidden = false; });
  // A cleared feed stays cleared on reconnect: the replayed triggers are known.

  // ------------------------------------------------------------------------------------------
  // Campaigns table, refreshed every 1.5 s

  let lastTable = '';
  let deleteArmed = null;

  function ago(iso) {
    if (!iso) return '–';
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(iso).toLocaleDateString();
  }
  const day = (iso) => String(iso).slice(0, 10);
  function windowText(def) {
    const from = def.start_date ? day(def.start_date) : null;
    const to = def.end_date ? day(def.end_date) : null;
    if (from && to) return `${from} → ${to}`;
    if (from) return `from ${from}`;
    if (to) return `until ${to}`;
    return 'always';
  }

  function renderCampaigns(list) {
    const key = JSON.stringify(list) + '|' + Math.floor(Date.now() / 5000) + '|' + deleteArmed;
    if (key === lastTable) return;
    lastTable = key;
    ui.tableEmpty.hidden = list.length > 0;
    const byState = {};
    for (const c of list) byState[c.state] = (byState[c.state] || 0) + 1;
    ui.campaignsNote.textContent = ['active', 'quarantined', 'rejected', 'deleted']
      .filter((state) => byState[state]).map((state) => `${byState[state]} ${state}`).join(' · ');
    ui.table.replaceChildren(...list.map((c) => {
      const def = c.campaign || {};
      const n = c.counters;
      const errorsByKind = Object.entries(n.errors).filter(([, v]) => v > 0).map(([k, v]) => `${k}: ${v}`).join(', ');
      const actions = el('td', { class: 'actions' });
      if (c.campaign) {
        const wasm = wasmKind(c.campaign) !== null;
        const edit = el('button', { type: 'button', class: 'link', text: wasm ? 'view' : 'edit', title: wasm ? 'show in the campaign panel (a WebAssembly filter: not editable here)' : 'load into the campaign editor' });
        edit.addEventListener('click', () => {
          ui.campaignJson.value = JSON.stringify(c.campaign, null, 2);
          setResult(ui.campaignResult, '', '');
          onCampaignJsonInput();
        });
        actions.append(edit);
      }
      if (c.controls && Object.keys(c.controls).length) {
        const who = el('button', { type: 'button', class: 'link', text: 'player…', title: 'look up one player\'s state for this campaign' });
        who.addEventListener('click', () => { look.campaign.value = String(c.campaign_id); look.player.focus(); });
        actions.append(who);
      }
      if (c.state !== 'deleted') {
        const armed = deleteArmed === c.campaign_id;
        const del = el('button', { type: 'button', class: 'link danger', text: armed ? 'confirm delete' : 'delete' });
        del.addEventListener('click', () => deleteCampaign(c.campaign_id));
        actions.append(del);
      }
      // One cell: its label (shown on narrow windows) and its content in one element.
      const cell = (cls, label, ...content) => el('td', { class: cls, 'data-label': label }, el('span', {}, ...content));
      return el('tr', { class: c.state, dataset: { id: String(c.campaign_id), state: c.state } },
        cell('id', 'id', String(c.campaign_id)),
        cell('', 'state', el('span', { class: `state state-${c.state}`, text: c.state })),
        cell('', 'game · event', c.campaign ? `${def.game} · ${def.event_name}` : '–', def.enabled === false ? el('span', { class: 'tag', text: 'disabled' }) : null,
          c.campaign && wasmKind(c.campaign) ? el('span', { class: 'tag tag-wasm', text: 'wasm', title: `WebAssembly filter, sha256 ${def.filter_wasm_sha256 || ''}` }) : null),
        cell('window', 'window', c.campaign ? windowText(def) : '–'),
        cell('num evaluations', 'evaluations', n.evaluations.toLocaleString()),
        cell('num matches', 'matches', n.matches.toLocaleString()),
        el('td', { class: 'num errors', 'data-label': 'errors', title: errorsByKind || 'no error' }, el('span', { text: n.errors_total.toLocaleString() + (errorsByKind ? ` (${errorsByKind})` : '') })),
        cell('num', 'fuel p50 / p99', n.fuel_p50 == null ? '–' : `${n.fuel_p50.toLocaleString()} / ${n.fuel_p99.toLocaleString()}`),
        el('td', { class: 'when', 'data-label': 'last match', title: n.last_match_at || '' }, el('span', { text: ago(n.last_match_at) })),
        controlsCell(c),
        errorCell(c, cell),
        actions);
    }));
  }

  /** The campaigns table's per-player controls: as given (compact; the preview as the title),
   *  then their counters. */
  function controlsCell(c) {
    const given = controls.compact(c.controls), counts = controls.countersText(c.counters, c.controls);
    return el('td', { class: 'controls', 'data-label': 'per-player controls', title: c.campaign ? controls.describe(c.campaign).text : '' },
      el('span', {},
        el('span', { class: 'given', text: given || '–' }),
        counts ? el('span', { class: 'counts', text: counts }) : null));
  }

  async function refreshCampaigns() {
    try {
      const r = await api('GET', '/api/campaigns');
      if (r.ok) renderCampaigns(r.body.campaigns);
    } catch (_) {
      ui.campaignsNote.textContent = 'rtcrm unreachable';
    }
  }

  async function deleteCampaign(id) {
    if (deleteArmed !== id) {
      deleteArmed = id;
      refreshCampaigns();
      setTimeout(() => { if (deleteArmed === id) { deleteArmed = null; refreshCampaigns(); } }, 4000);
      return;
    }
    deleteArmed = null;
    try {
      const r = await api('DELETE', `/api/campaigns/${encodeURIComponent(id)}`);
      setResult(ui.campaignResult, r.ok ? 'ok' : 'bad', r.ok ? `campaign ${id} deleted (tombstone sent to ${r.body.topic})` : `not deleted: ${errorText(r)}`);
    } catch (e) {
      setResult(ui.campaignResult, 'bad', 'not deleted: ' + e.message);
    }
    refreshCampaigns();
  }

  // ------------------------------------------------------------------------------------------
  // Estimate and explain (issue 9): a backtest of the editor's campaign before "send"
  // (POST /api/backtest, polled, cancellable), "why no trigger?" for the editor's event
  // (POST /api/explain), and each campaign's last evaluation error in the table.

  const dry = {
    estimate: $('campaign-estimate'), range: $('estimate-range'), cancel: $('estimate-cancel'),
    status: $('estimate-status'), figures: $('estimate-figures'), histogram: $('estimate-histogram'),
    explain: $('event-explain'), explainBox: $('explain'), explainSummary: $('explain-summary'), explainList: $('explain-list'),
  };
  let estimateJob = null;   // the running backtest's id
  let estimated = null;     // the campaign JSON the estimate shown is of
  let explaining = false;
  let explained = null;     // the event JSON the explanation shown is of
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const num = (n) => (n == null ? '–' : Number(n).toLocaleString());

  function updateEstimate() {
    // An edit makes the estimate shown stale.
    if (estimateJob === null && estimated !== null && ui.campaignJson.value !== estimated) {
      estimated = null;
      setResult(dry.status, '', '');
      dry.figures.hidden = true;
      dry.histogram.hidden = true;
    }
    dry.estimate.disabled = estimateJob !== null || !campaignObject || compileState !== 'ok';
    dry.estimate.title = estimateJob !== null ? 'estimating…' : !campaignObject ? 'the campaign JSON does not parse'
      : compileState !== 'ok' ? 'the filter does not compile' : 'how often it would have triggered, before sending it';
  }

  function figure(name, label, value, bad) {
    return el('div', { class: 'figure' + (bad ? ' bad' : ''), dataset: { figure: name } }, el('dt', { text: label }), el('dd', { text: value }));
  }

  function renderHistogram(h) {
    const buckets = (h && h.buckets) || [];
    dry.histogram.hidden = buckets.length === 0;
    if (!buckets.length) { dry.histogram.replaceChildren(); return; }
    const max = Math.max(1, ...buckets.map((b) => b.triggers));
    const label = (b) => (h.unit === 'day' ? b.start.slice(0, 10) : b.start.slice(0, 16).replace('T', ' '));
    const bars = buckets.map((b) => {
      const bar = el('div', { class: 'bar' + (b.triggers ? '' : ' zero'), title: `${label(b)}: ${b.triggers.toLocaleString()} triggers` });
      // Through the CSSOM: the console's CSP refuses style attributes.
      bar.style.height = `${Math.max(b.triggers ? 6 : 0, Math.round(100 * b.triggers / max))}%`;
      return bar;
    });
    dry.histogram.replaceChildren(el('div', { class: 'bars' }, ...bars),
      el('div', { class: 'axis' }, el('span', { text: label(buckets[0]) }), el('span', { text: `triggers per ${h.unit} (UTC)` }),
        el('span', { text: label(buckets[buckets.length - 1]) })));
  }

  function renderEstimate(job) {
    if (job.state === 'failed') {
      setResult(dry.status, 'bad', 'estimate failed: ' + job.error);
      return;
    }
    const r = job.report;
    const stopped = { cancelled: ' (cancelled: the events decided so far)', max_events: ' (stopped at the event limit)', max_seconds: ' (stopped at the time limit)' }[r.stopped] || '';
    const plural = (n, word) => `${num(n)} ${word}${n === 1 ? '' : 's'}`;
    const summary = `campaign ${r.campaign_id} would have triggered ${plural(r.triggers, 'time')} for ${plural(r.unique_players, 'player')} in ${plural(r.events_read, 'event')}${stopped}`;
    const warnings = r.warnings.length ? ' — ' + r.warnings.join(' — ') : '';
    setResult(dry.status, r.errors_total > 0 || r.stopped ? 'bad' : 'ok', summary + warnings);
    const firstError = r.error_examples[0];
    dry.figures.replaceChildren(
      figure('events', 'events', num(r.events_read)),
      figure('candidates', 'candidates', num(r.candidates)),
      figure('matches', 'filter matches', num(r.filter_matches)),
      figure('triggers', 'triggers', num(r.triggers)),
      figure('players', 'unique players', num(r.unique_players)),
      figure('control', 'control group', num(r.control_group_matches)),
      // A campaign with controls (spec §12): what they held back, and the timers.
      ...(r.controls == null ? [] : [
        figure('controls', 'controls', r.controls),
        figure('counting', 'counting', num(r.counting)),
        figure('cooldown', 'cooldown', num(r.suppressed_cooldown)),
        figure('cap', 'cap', num(r.suppressed_cap)),
        ...(r.timers_armed || r.inactivity_firings || r.timers_pending_at_end ? [
          figure('inactivity', 'inactivity triggers', num(r.inactivity_triggers)),
          figure('pending', 'timers still armed', num(r.timers_pending_at_end))] : []),
        ...Object.entries(r.variants || {}).map(([v, n]) => figure(`variant-${v}`, `variant ${v}`, num(n)))]),
      figure('errors', 'errors', num(r.errors_total) + (firstError ? ` (${firstError.kind}: ${firstError.message})` : ''), r.errors_total > 0),
      figure('fuel', 'fuel p50 / p99', `${num(r.fuel_p50)} / ${num(r.fuel_p99)}`));
    dry.figures.hidden = false;
    renderHistogram(r.histogram);
  }

  async function runEstimate() {
    if (dry.estimate.disabled) return;
    dry.figures.hidden = true;
    dry.histogram.hidden = true;
    estimated = ui.campaignJson.value;
    setResult(dry.status, 'pending', 'estimating…');
    let started;
    try {
      started = await api('POST', '/api/backtest', JSON.stringify({ campaign: campaignObject, from: dry.range.value }));
    } catch (e) {
      setResult(dry.status, 'bad', 'not estimated: ' + e.message);
      return;
    }
    if (!started.ok) {
      setResult(dry.status, 'bad', 'not estimated: ' + errorText(started));
      return;
    }
    estimateJob = started.body.id;
    dry.cancel.hidden = false;
    updateEstimate();
    try {
      for (;;) {
        const r = await api('GET', `/api/backtest/${encodeURIComponent(estimateJob)}`);
        if (!r.ok) throw new Error(errorText(r));
        if (r.body.state !== 'running') { renderEstimate(r.body); break; }
        const p = r.body.progress;
        setResult(dry.status, 'pending', `estimating… ${num(p.events)} events` + (p.fraction == null ? '' : ` · ${Math.floor(p.fraction * 100)} %`));
        await sleep(300);
      }
    } catch (e) {
      setResult(dry.status, 'bad', 'estimate failed: ' + e.message);
    } finally {
      estimateJob = null;
      dry.cancel.hidden = true;
      updateEstimate();
    }
  }

  async function cancelEstimate() {
    if (estimateJob === null) return;
    try {
      // The polling loop shows the outcome (state "cancelled", with the counts so far).
      await api('DELETE', `/api/backtest/${encodeURIComponent(estimateJob)}`);
    } catch (e) {
      setResult(dry.status, 'bad', 'not cancelled: ' + e.message);
    }
  }

  function updateExplain() {
    // An edit makes the explanation shown stale.
    if (!explaining && explained !== null && ui.eventJson.value !== explained) {
      explained = null;
      dry.explainBox.hidden = true;
    }
    dry.explain.disabled = !eventValid || explaining;
  }

  const decisionText = {
    trigger: '✓ trigger', filter_false: 'filter false', filter_error: 'filter error', disabled: 'disabled',
    quarantined: 'quarantined', other_event_name: 'event name', before_start: 'before start', after_end: 'after end',
    not_evaluated: 'not evaluated', no_player: 'no player', control_group: 'control group', armed: 'timer armed',
    controls: 'matched · controls decide', counting: 'counting', cooldown: 'cooldown', cap: 'cap',
  };

  async function runExplain() {
    if (dry.explain.disabled) return;
    explaining = true;
    explained = ui.eventJson.value;
    updateExplain();
    dry.explainBox.hidden = false;
    setResult(dry.explainSummary, 'pending', 'explaining…');
    dry.explainList.replaceChildren();
    try {
      const r = await api('POST', '/api/explain', ui.eventJson.value);
      if (!r.ok) {
        setResult(dry.explainSummary, 'bad', 'not explained: ' + errorText(r));
        return;
      }
      const x = r.body;
      const head = `event time ${x.time} (${x.time_source}) · player ${show(x.player)} · `;
      const verdict = x.note ? x.note
        : x.campaigns.length === 0 ? `no campaign of game ${x.game} is in force`
          : `${x.triggers} of ${x.campaigns.length} campaigns of game ${x.game} would trigger`
            + (x.decided_by_stored_state ? ` (${x.decided_by_stored_state} more matched: their controls decide on the player's stored state)` : '');
      setResult(dry.explainSummary, x.triggers > 0 ? '' : 'bad', head + verdict);
      dry.explainList.replaceChildren(...x.campaigns.map((c) => {
        const matched = ['control_group', 'armed', 'controls', 'counting', 'cooldown', 'cap'].includes(c.decision);
        const kind = c.decision.startsWith('filter') || c.decision === 'trigger' || c.decision === 'not_evaluated' ? c.decision : matched ? 'matched' : 'skip';
        return el('li', { class: `${kind} ${c.decision}`, dataset: { campaign: String(c.campaign_id), decision: c.decision } },
          el('b', { text: String(c.campaign_id) }), el('span', { class: 'decision', text: decisionText[c.decision] || c.decision }),
          el('span', { class: 'reason', text: c.reason }));
      }));
    } catch (e) {
      setResult(dry.explainSummary, 'bad', 'not explained: ' + e.message);
    } finally {
      explaining = false;
      updateExplain();
    }
  }

  /** The campaigns table's error cell: the state's error (rejection, quarantine) and the last
   *  evaluation error with the event's partition and offset. */
  function errorCell(c, cell) {
    const last = c.counters && c.counters.last_error;
    const parts = [];
    if (c.error) parts.push(el('span', { text: c.error }));
    if (last) {
      parts.push(el('span', { class: 'last-error', title: last.at || '',
        text: `last ${last.kind}: ${last.message} (partition ${last.partition}, offset ${last.offset}, ${ago(last.at)})` }));
    }
    return parts.length ? cell('error', 'error', ...parts) : el('td', { class: 'error' });
  }

  dry.estimate.addEventListener('click', runEstimate);
  dry.cancel.addEventListener('click', cancelEstimate);
  dry.explain.addEventListener('click', runExplain);

  // ------------------------------------------------------------------------------------------
  // One player's state (GET /api/campaigns/{id}/players/{player}), for support questions

  const look = { form: $('player-lookup'), campaign: $('lookup-campaign'), player: $('lookup-player'), result: $('lookup-result'), lines: $('lookup-lines') };

  async function lookUp(e) {
    e.preventDefault();
    const id = look.campaign.value.trim(), player = look.player.value.trim();
    if (!id || !player) return;
    look.lines.hidden = true;
    setResult(look.result, 'pending', 'looking up…');
    try {
      const r = await api('GET', `/api/campaigns/${encodeURIComponent(id)}/players/${encodeURIComponent(player)}`);
      if (!r.ok) { setResult(look.result, 'bad', errorText(r)); return; }
      setResult(look.result, r.body.found ? 'ok' : '', r.body.message);
      look.lines.replaceChildren(...controls.playerLines(r.body).map(([label, text]) =>
        el('div', { dataset: { line: label } }, el('dt', { text: label }), el('dd', { text }))));
      look.lines.hidden = false;
    } catch (err) {
      setResult(look.result, 'bad', 'not looked up: ' + err.message);
    }
  }

  look.form.addEventListener('submit', lookUp);

  // ------------------------------------------------------------------------------------------
  // Start

  renderFilter();
  onEventInput();
  updateCampaignSend();
  refreshInfo();
  refreshCampaigns();
  connectFeed();
  setInterval(refreshCampaigns, 1500);
  setInterval(refreshInfo, 5000);
})();
