// rtcrm console: per-player campaign controls (spec §12), without the DOM — the checks the
// processor makes (host/src/state/controls.rs), the one-line plain-English preview of what a
// campaign's controls mean, the campaigns table's compact form, and the lines of one player's
// state (GET /api/campaigns/{id}/players/{player}). Loaded before console.js as
// `window.rtcrmControls`.
'use strict';

(() => {
  const SECOND = 1000, MINUTE = 60 * SECOND, HOUR = 60 * MINUTE, DAY = 24 * HOUR, WEEK = 7 * DAY;
  // The units humantime (the processor's duration parser) takes; `M`, months and years have no
  // fixed length and are refused there too.
  const UNITS = {
    ms: 1, msec: 1, s: SECOND, sec: SECOND, second: SECOND, seconds: SECOND,
    m: MINUTE, min: MINUTE, minute: MINUTE, minutes: MINUTE, h: HOUR, hr: HOUR, hour: HOUR, hours: HOUR,
    d: DAY, day: DAY, days: DAY, w: WEEK, week: WEEK, weeks: WEEK,
  };
  const CALENDAR = ['M', 'month', 'months', 'y', 'year', 'years'];
  const FIELDS = ['cooldown', 'max_triggers_per_player', 'count', 'inactivity', 'holdout_percent', 'variants', 'state_version', 'state'];

  /** Milliseconds of a duration as the processor reads it ("90s", "1h 30m", "7d", "PT30M",
   *  "P1DT12H"); throws an Error saying why not. */
  function parseDuration(text) {
    if (typeof text !== 'string') throw new Error('must be a duration such as "90s", "30m", "24h", "7d" or "PT30M"');
    const t = text.trim();
    let ms = 0;
    if (/^[Pp]/.test(t)) {
      const m = /^[Pp](?:(\d+(?:[.,]\d+)?)[Ww])?(?:(\d+(?:[.,]\d+)?)[Dd])?(?:[Tt](?:(\d+(?:[.,]\d+)?)[Hh])?(?:(\d+(?:[.,]\d+)?)[Mm])?(?:(\d+(?:[.,]\d+)?)[Ss])?)?$/.exec(t);
      const n = (x) => (x === undefined ? 0 : Number(x.replace(',', '.')));
      if (!m || t.length === 1 || /[Tt]$/.test(t)) throw new Error(`${t} is not an ISO-8601 duration such as PT30M or P7D (months and years are not supported)`);
      ms = Math.round(n(m[1]) * WEEK + n(m[2]) * DAY + n(m[3]) * HOUR + n(m[4]) * MINUTE + n(m[5]) * SECOND);
    } else {
      const parts = t.match(/\d+\s*[A-Za-z]+/g);
      if (!t || !parts || parts.join('').replace(/\s/g, '') !== t.replace(/\s/g, '')) {
        throw new Error('not a duration; use e.g. "90s", "30m", "24h", "7d" or "PT30M"');
      }
      for (const part of parts) {
        const [, num, unit] = /^(\d+)\s*([A-Za-z]+)$/.exec(part);
        if (CALENDAR.includes(unit)) throw new Error('months and years have no fixed length; use days ("30d")');
        if (!(unit in UNITS)) throw new Error(`unknown unit "${unit}"; use s, m, h, d or w`);
        ms += Number(num) * UNITS[unit];
      }
    }
    if (!(ms > 0)) throw new Error('a duration must be positive');
    return ms;
  }

  /** A duration as the campaign JSON writes it: 1h, 10m, 1h 30m, 7d. */
  function durationText(ms) {
    const out = [];
    for (const [size, unit] of [[DAY, 'd'], [HOUR, 'h'], [MINUTE, 'm'], [SECOND, 's'], [1, 'ms']]) {
      if (ms >= size) { out.push(`${Math.floor(ms / size)}${unit}`); ms %= size; }
    }
    return out.join(' ');
  }

  /** 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st. */
  function ordinal(n) {
    const teen = n % 100 >= 11 && n % 100 <= 13;
    const suffix = teen ? 'th' : ({ 1: 'st', 2: 'nd', 3: 'rd' }[n % 10] || 'th');
    return `${n}${suffix}`;
  }

  const isPositiveInt = (v, max) => Number.isInteger(v) && v >= 1 && v <= max;
  const present = (c, k) => c[k] !== undefined && c[k] !== null;
  const show = (v) => (typeof v === 'string' ? v : JSON.stringify(v));

  /** The controls of a campaign object, checked as the processor checks them: `{ parsed, errors }`
   *  with `parsed` in milliseconds, basis points and plain numbers. */
  function read(c) {
    const errors = [];
    const p = {};
    const duration = (name, value) => {
      try { return parseDuration(value); } catch (e) { errors.push(`${name} \`${show(value)}\`: ${e.message}`); return null; }
    };
    if (present(c, 'cooldown')) p.cooldown = duration('cooldown', c.cooldown);
    if (present(c, 'inactivity')) p.inactivity = duration('inactivity', c.inactivity);
    if (present(c, 'max_triggers_per_player')) {
      if (isPositiveInt(c.max_triggers_per_player, 4294967295)) p.cap = c.max_triggers_per_player;
      else errors.push(`max_triggers_per_player \`${show(c.max_triggers_per_player)}\` must be a positive integer`);
    }
    if (present(c, 'count')) {
      const count = c.count;
      if (typeof count !== 'object' || Array.isArray(count)) {
        errors.push('count must be an object like {"at_least": 3, "within": "10m"}');
      } else {
        const unknown = Object.keys(count).filter((k) => k !== 'at_least' && k !== 'within');
        if (unknown.length) errors.push(`count.${unknown[0]} is unknown; use at_least and within`);
        if (!isPositiveInt(count.at_least, 10000)) errors.push(`count.at_least \`${show(count.at_least)}\` must be an integer from 1 to 10000`);
        const within = count.within === undefined ? (errors.push('count.within is missing: a duration such as "10m"'), null) : duration('count.within', count.within);
        if (isPositiveInt(count.at_least, 10000) && within) p.count = { atLeast: count.at_least, within };
      }
    }
    if (present(c, 'holdout_percent')) {
      const h = c.holdout_percent;
      if (typeof h !== 'number' || !(h >= 0 && h <= 100)) errors.push(`holdout_percent \`${show(h)}\` must be a number from 0 to 100`);
      else if (Math.abs(Math.round(h * 100) - h * 100) > 1e-6) errors.push(`holdout_percent \`${h}\` has more than two decimals`);
      else p.holdout = h;
    }
    if (present(c, 'variants')) {
      const v = c.variants;
      if (!Array.isArray(v)) errors.push('variants must be an array like [{"name": "A", "weight": 1}]');
      else if (v.length === 0) errors.push('variants is empty; give at least one, or leave it out');
      else {
        const seen = new Set();
        let ok = true;
        for (const item of v) {
          const good = item && typeof item.name === 'string' && item.name !== '' && isPositiveInt(item.weight, 1000000);
          if (!good) errors.push(`variants: \`${show(item)}\` must be like {"name": "A", "weight": 1} (a name and a weight from 1 to 1000000)`);
          else if (seen.has(item.name)) errors.push(`variants: the name \`${item.name}\` appears twice`);
          if (!good || seen.has(item.name)) { ok = false; break; }
          seen.add(item.name);
        }
        if (ok) p.variants = v.map((x) => ({ name: x.name, weight: x.weight }));
      }
    }
    if (present(c, 'state_version')) {
      if (Number.isInteger(c.state_version)) p.stateVersion = c.state_version;
      else errors.push(`state_version \`${show(c.state_version)}\` must be an integer`);
    }
    if (present(c, 'state')) {
      const s = c.state;
      if (typeof s !== 'object' || Array.isArray(s)) errors.push('state must be an object like {"ttl": "30d", "max_bytes": 1024}');
      else {
        const unknown = Object.keys(s).filter((k) => k !== 'ttl' && k !== 'max_bytes');
        if (unknown.length) errors.push(`state.${unknown[0]} is unknown; use ttl and max_bytes`);
        const ttl = present(s, 'ttl') ? duration('state.ttl', s.ttl) : null;
        const maxBytes = present(s, 'max_bytes') ? s.max_bytes : 1024;
        if (!(Number.isInteger(maxBytes) && maxBytes >= 2)) errors.push(`state.max_bytes \`${show(maxBytes)}\` must be an integer of at least 2`);
        p.state = { ttl, maxBytes };
      }
    }
    if (present(c, 'inactivity') && present(c, 'count')) errors.push('inactivity and count cannot be combined: inactivity triggers on the absence of matches');
    return { parsed: p, errors };
  }

  const percent = (n) => `${Number(n.toFixed(2))} %`;

  /** The preview: `{ text, errors }` — one line, in the processor's order of checks, of what the
   *  campaign's controls mean. */
  function describe(c) {
    const { parsed: p, errors } = read(c || {});
    const parts = [];
    if (p.count) parts.push(`triggers on the ${ordinal(p.count.atLeast)} match within ${durationText(p.count.within)}, then counts again`);
    if (p.inactivity) parts.push(`triggers when a player has had no matching event for ${durationText(p.inactivity)} (with the last one)`);
    if (p.cooldown) parts.push(`at most once per ${durationText(p.cooldown)} per player`);
    if (p.cap) parts.push(p.cap === 1 ? 'at most 1 trigger per player, ever' : `at most ${p.cap.toLocaleString('en')} triggers per player`);
    if (p.holdout !== undefined && p.holdout > 0) parts.push(`${percent(p.holdout)} of players held out as control group (to the control topic, never messaged)`);
    if (p.variants) {
      const total = p.variants.reduce((sum, v) => sum + v.weight, 0);
      parts.push(`variants ${p.variants.map((v) => `${v.name} ${percent(100 * v.weight / total)}`).join(' · ')}`);
    }
    if (p.state) parts.push(`filter(event, state) keeps up to ${p.state.maxBytes.toLocaleString('en')} bytes per player${p.state.ttl ? `, forgotten after ${durationText(p.state.ttl)} untouched` : ''}`);
    if (p.stateVersion !== undefined && p.stateVersion !== 0) parts.push(`state version ${p.stateVersion} (changing it resets every player's state)`);
    const text = parts.length ? parts.join('; ') : 'no per-player controls: every match triggers';
    return { text, errors };
  }

  /** The campaigns table's compact form of the controls given (`{}` or null: none). */
  function compact(given) {
    if (!given) return '';
    const out = [];
    if (present(given, 'count') && typeof given.count === 'object') out.push(`${given.count.at_least} in ${given.count.within}`);
    if (present(given, 'inactivity')) out.push(`idle ${given.inactivity}`);
    if (present(given, 'cooldown')) out.push(`cooldown ${given.cooldown}`);
    if (present(given, 'max_triggers_per_player')) out.push(`cap ${given.max_triggers_per_player}`);
    if (present(given, 'holdout_percent') && given.holdout_percent > 0) out.push(`holdout ${given.holdout_percent} %`);
    if (Array.isArray(given.variants)) out.push(given.variants.map((v) => v.name).join('/'));
    if (present(given, 'state')) out.push('state');
    if (present(given, 'state_version') && given.state_version !== 0) out.push(`v${given.state_version}`);
    return out.join(' · ');
  }

  /** Bytes as "512 B", "3.4 KB", "2.1 MB". */
  function bytesText(n) {
    if (n < 1000) return `${n} B`;
    if (n < 1e6) return `${(n / 1e3).toFixed(1)} KB`;
    return `${(n / 1e6).toFixed(1)} MB`;
  }

  /** The campaigns table's per-player counters (empty when the campaign uses no control and
   *  nothing was counted). */
  function countersText(n, given) {
    const s = n.suppressed || {};
    const any = n.control_matches || s.cooldown || s.cap || s.count || n.no_player || n.timers_pending || n.state_entries;
    if (!any && !(given && Object.keys(given).length)) return '';
    const out = [];
    const plural = (k, word) => `${k.toLocaleString('en')} ${word}${k === 1 ? '' : 's'}`;
    out.push(`${plural(n.state_entries, 'state')} (${bytesText(n.state_bytes)})`);
    if (n.timers_pending) out.push(plural(n.timers_pending, 'timer'));
    const sup = [['cooldown', s.cooldown], ['cap', s.cap], ['count', s.count]].filter(([, v]) => v).map(([k, v]) => `${k} ${v.toLocaleString('en')}`);
    if (sup.length) out.push(`suppressed: ${sup.join(', ')}`);
    if (n.control_matches) out.push(`control ${n.control_matches.toLocaleString('en')}`);
    if (n.no_player) out.push(`no player ${n.no_player.toLocaleString('en')}`);
    return out.join(' · ');
  }

  /** One player's state (the API's answer) as `[label, text]` lines, as `rtcrm campaign state`
   *  prints them. */
  function playerLines(v) {
    const lines = [['campaign', `${v.campaign_id} · player ${v.player_id}${v.partition == null ? '' : ` · partition ${v.partition}`}`]];
    if (v.partition_time) lines.push(['time', `${v.partition_time} (the partition's clock)`]);
    const g = v.group;
    lines.push(['group', `${g.group} (bucket ${g.holdout_bucket} of 10000; ${g.holdout_percent > 0 ? `${g.holdout_percent} % held out` : 'no holdout'})${g.variant ? ` · variant ${g.variant}` : ''}`]);
    const s = v.state;
    if (!s) { lines.push(['state', v.message]); return lines; }
    lines.push(['state', `${s.bytes} bytes, state_version ${s.state_version}${s.stale_version ? ' — another state_version: reset on the next event' : ''}`]);
    if (s.last_event_at) lines.push(['last event', s.last_event_at]);
    lines.push(['triggers', s.cap ? `${s.triggers} of at most ${s.cap.max}${s.cap.reached ? ' (cap reached)' : ''}` : String(s.triggers)]);
    if (s.last_trigger_at) lines.push(['last trigger', s.last_trigger_at]);
    if (s.cooldown) lines.push(['cooldown', s.cooldown.until ? `${s.cooldown.duration}: until ${s.cooldown.until}${s.cooldown.active ? ' (running)' : ' (over)'}` : `${s.cooldown.duration}: none yet (no trigger)`]);
    if (s.count) lines.push(['count', `${s.count.so_far} of ${s.count.at_least} matches within ${s.count.within}${s.count.matches.length ? ': ' + s.count.matches.join(', ') : ''} (${s.count.in_window_now} inside the window now)`]);
    if (s.inactivity) lines.push(['inactivity', `armed: fires at ${s.inactivity.due_at} with trigger ${s.inactivity.trigger_id}`]);
    if (s.pending) lines.push(['pending', `trigger ${s.pending.trigger_id} (fired at ${s.pending.due_at}, ${s.pending.group}${s.pending.variant ? `, variant ${s.pending.variant}` : ''}) not yet confirmed delivered`]);
    if (s.js_state != null) lines.push(['js state', JSON.stringify(s.js_state) + (s.js_state_expires_at ? ` (expires ${s.js_state_expires_at})` : '')]);
    lines.push(['expires', s.expires_at || 'never (kept while needed)']);
    return lines;
  }

  window.rtcrmControls = { FIELDS, parseDuration, durationText, ordinal, read, describe, compact, countersText, bytesText, playerLines };
})();
