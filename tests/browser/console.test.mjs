// End-to-end test of the rtcrm console (issue 5) in Debian's headless Chromium, driven by
// playwright-core: the original Demo UI's flow (create campaign 4711 from the example, send the
// example event, see the trigger in the feed and its toast), the campaigns table, and inline
// compile errors that refuse the send; the estimate before "send", "why no trigger?" and a
// filter's last runtime error in the table (issue 9). Fails on any browser console error. Takes
// the README's screenshots (docs/console-*.png).
//
// Run (after `cargo build --release -p rtcrm`): npm ci && node --test console.test.mjs
// Environment: RTCRM_BIN (default target/release/rtcrm), CHROMIUM (default /usr/bin/chromium).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const binary = process.env.RTCRM_BIN || path.join(root, 'target/release/rtcrm');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const docs = path.join(root, 'docs');
const chromiumArgs = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `rtcrm dev` on a free loopback port, once /readyz answers 200. */
async function startRtcrm() {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(binary, ['dev', '--http-addr', `127.0.0.1:${port}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'RTCRM_API_TOKEN' && k !== 'RTCRM_HTTP_ADDR')),
  });
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const deadline = Date.now() + 120_000;
  for (;;) {
    const r = await fetch(`${base}/readyz`).catch(() => null);
    if (r && r.status === 200) break;
    if (child.exitCode !== null) throw new Error(`rtcrm dev exited with ${child.exitCode}:\n${log}`);
    if (Date.now() > deadline) throw new Error(`rtcrm dev not ready within 120 s:\n${log}`);
    await sleep(200);
  }
  return {
    base,
    log: () => log,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

test('the console: campaign, event, live trigger, table, inline compile errors', { timeout: 240_000 }, async (t) => {
  assert.ok(fs.existsSync(binary), `${binary} is missing: build it with cargo build --release -p rtcrm`);
  assert.ok(fs.existsSync(chromiumPath), `${chromiumPath} is missing: install Debian's chromium (bash scripts/setup.sh)`);

  const rtcrm = await startRtcrm();
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
  const consoleErrors = [];
  const requests = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
    page.on('request', (r) => requests.push(`${r.method()} ${new URL(r.url()).pathname}`));
    page.on('request', (r) => {
      if (!r.url().startsWith(rtcrm.base)) consoleErrors.push(`request to another origin: ${r.url()}`);
    });

    const row = (id) => page.locator(`#campaigns tbody tr[data-id="${id}"]`);

    await t.test('loads, ready, with a live feed', async () => {
      await page.goto(`${rtcrm.base}/`);
      await page.locator('#ready', { hasText: 'ready' }).waitFor();
      await page.locator('#feed-status', { hasText: 'feed: live' }).waitFor();
      // rtcrm dev loads campaign 4711 itself.
      await row(4711).locator('.state-active').waitFor();
    });

    await t.test('deletes campaign 4711 from the table', async () => {
      await row(4711).getByRole('button', { name: 'delete' }).click();
      await row(4711).getByRole('button', { name: 'confirm delete' }).click();
      await page.locator('#campaigns tbody tr[data-id="4711"][data-state="deleted"]').waitFor();
      assert.ok(requests.includes('DELETE /api/campaigns/4711'));
    });

    await t.test('creates campaign 4711 from the example and sees it active', async () => {
      await page.locator('#campaign-example').click();
      await page.locator('#compile-status', { hasText: 'the filter compiles' }).waitFor();
      assert.match(await page.locator('#filter').inputValue(), /event\.getData\(\)\.get\('result'\) === 'loss'/);
      const send = page.locator('#campaign-send');
      await assert.doesNotReject(send.click({ trial: true }));
      assert.equal(await send.isEnabled(), true);
      await send.click();
      await page.locator('#campaign-result', { hasText: 'campaign 4711 sent to crm-campaigns' }).waitFor();
      await page.locator('#campaigns tbody tr[data-id="4711"][data-state="active"]').waitFor();
    });

    await t.test('sends the example event and sees the trigger in the feed and the toast', async () => {
      await page.locator('#event-example').click();
      await page.locator('#event-send:enabled').click();
      await page.locator('#event-result', { hasText: 'event sent to events-valid' }).waitFor();
      const item = page.locator('#feed li[data-campaign="4711"]').first();
      await item.waitFor();
      assert.match(await item.innerText(), /campaign 4711 → player 12345/);
      await page.locator('.toast', { hasText: 'campaign 4711 triggered for player 12345 in game foe, market de' }).waitFor();
      // The table's counters follow.
      await page.locator('#campaigns tbody tr[data-id="4711"] td.matches', { hasText: /^1$/ }).waitFor();
      assert.equal(await row(4711).locator('td.evaluations').innerText(), '1');
      assert.notEqual(await row(4711).locator('td.when').innerText(), '–');
      fs.mkdirSync(docs, { recursive: true });
      await page.screenshot({ path: path.join(docs, 'console-1280x800.png') });
    });

    // Issue 9: estimate before "send", "why no trigger?", runtime errors in the table.
    await t.test('estimates the campaign in the editor over the last 7 days of events', async () => {
      // The editor holds campaign 4711; the events topic holds the one example event.
      assert.equal(await page.locator('#estimate-range').inputValue(), 'now-7d');
      await page.locator('#campaign-estimate:enabled').click();
      const triggers = page.locator('#estimate-figures [data-figure="triggers"] dd');
      await triggers.filter({ hasText: /^1$/ }).waitFor();
      const value = async (name) => page.locator(`#estimate-figures [data-figure="${name}"] dd`).innerText();
      assert.equal(await value('events'), '1');
      assert.equal(await value('candidates'), '1');
      assert.equal(await value('matches'), '1');
      assert.equal(await value('players'), '1');
      assert.equal(await value('control'), '0');
      assert.equal(await value('errors'), '0');
      assert.match(await page.locator('#estimate-status').innerText(), /^campaign 4711 would have triggered 1 time for 1 player in 1 event$/);
      assert.equal(await page.locator('#estimate-histogram .bar').count(), 1);
      assert.match(await page.locator('#estimate-histogram .axis').innerText(), /triggers per hour \(UTC\)/);
      assert.ok(requests.includes('POST /api/backtest'));
      assert.ok(requests.some((r) => /^GET \/api\/backtest\/\d+$/.test(r)), 'the job is polled');
      await page.locator('#campaign-estimate:enabled').waitFor();
      await page.screenshot({ path: path.join(docs, 'console-estimate.png') });
    });

    await t.test('estimates a campaign with controls and shows what they held back', async () => {
      const original = await page.locator('#campaign-json').inputValue();
      const campaign = JSON.parse(original);
      campaign.count = { at_least: 2, within: '10m' };
      campaign.cooldown = '1h';
      await page.locator('#campaign-json').fill(JSON.stringify(campaign, null, 2));
      await page.locator('#campaign-estimate:enabled').click();
      const value = (name) => page.locator(`#estimate-figures [data-figure="${name}"] dd`);
      await value('controls').filter({ hasText: /^count 2 in 10m, cooldown 1h$/ }).waitFor();
      // The one lost fight is the player's first: counting, no trigger.
      assert.equal(await value('matches').innerText(), '1');
      assert.equal(await value('counting').innerText(), '1');
      assert.equal(await value('triggers').innerText(), '0');
      assert.equal(await value('cooldown').innerText(), '0');
      assert.match(await page.locator('#estimate-status').innerText(), /^campaign 4711 would have triggered 0 times for 0 players in 1 event — per-player state starts empty/);
      await page.locator('#campaign-json').fill(original);
      assert.equal(await page.locator('#estimate-figures').isHidden(), true, 'an edit hides the estimate');
    });

    await t.test('explains why an event triggers or not, campaign by campaign', async () => {
      const decision = (id) => page.locator(`#explain-list li[data-campaign="${id}"]`);
      await page.locator('#event-explain:enabled').click();
      await decision(4711).and(page.locator('[data-decision="trigger"]')).waitFor();
      assert.match(await page.locator('#explain-summary').innerText(), /event time 2023-11-20T11:00:00Z \(created_at\) · player 12345 · 1 of 1 campaigns of game foe would trigger/);
      // An event created before the campaign's start: no trigger, and why.
      const event = JSON.parse(await page.locator('#event-json').inputValue());
      event.created_at = '2023-08-01T09:00:00Z';
      await page.locator('#event-json').fill(JSON.stringify(event, null, 2));
      assert.equal(await page.locator('#explain').isHidden(), true, 'an edit hides the stale explanation');
      await page.locator('#event-explain:enabled').click();
      await decision(4711).and(page.locator('[data-decision="before_start"]')).waitFor();
      assert.equal(await decision(4711).locator('.reason').innerText(),
        "the event's time 2023-08-01T09:00:00Z (created_at) is not after start_date 2023-09-01T10:00:00Z");
      assert.match(await page.locator('#explain-summary').innerText(), /0 of 1 campaigns of game foe would trigger/);
      assert.ok(requests.includes('POST /api/explain'));
      await page.screenshot({ path: path.join(docs, 'console-explain.png') });
      await page.locator('#event-example').click();
      assert.equal(await page.locator('#explain').isHidden(), true, 'a new event hides the stale explanation');
    });

    await t.test('a filter that throws shows its last error in the table', async () => {
      const campaign = JSON.parse(await page.locator('#campaign-json').inputValue());
      campaign.campaign_id = 4712;
      campaign.filter = 'e => e.data.nope.deeper';
      await page.locator('#campaign-json').fill(JSON.stringify(campaign, null, 2));
      assert.equal(await page.locator('#estimate-figures').isHidden(), true, "an edit hides the previous campaign's estimate");
      assert.equal(await page.locator('#estimate-status').innerText(), '');
      await page.locator('#compile-status', { hasText: 'the filter compiles' }).waitFor();
      await page.locator('#campaign-send:enabled').click();
      await page.locator('#campaigns tbody tr[data-id="4712"][data-state="active"]').waitFor();
      await page.locator('#event-send:enabled').click();
      const error = row(4712).locator('td.error .last-error');
      await error.filter({ hasText: /^last exception: TypeError: .* \(partition 0, offset \d+, \d+ s ago\)$/ }).waitFor();
      assert.equal(await row(4711).locator('td.error').innerText(), '');
    });

    await t.test('a filter with a syntax error shows line and column and refuses the send', async () => {
      const before = requests.filter((r) => r === 'POST /api/campaigns').length;
      const filter = page.locator('#filter');
      await filter.fill('');
      await filter.pressSequentially("function(event) {\n  return event.data.result === ;\n}", { delay: 15 });
      const status = page.locator('#compile-status');
      await status.filter({ hasText: /^line 2, column \d+: SyntaxError/ }).waitFor();
      assert.equal(await page.locator('#filter-gutter .err').innerText(), '2', 'the error line is marked');
      assert.equal(await page.locator('#filter-backdrop .err-line mark').count(), 1, 'the error column is marked');
      assert.equal(await page.locator('#campaign-send').isDisabled(), true, 'send is refused');
      assert.equal(await page.locator('#campaign-estimate').isDisabled(), true, 'so is the estimate');
      // The campaign JSON follows the filter editor.
      assert.match(await page.locator('#campaign-json').inputValue(), /=== ;/);
      await page.locator('#campaign-send').click({ force: true });
      await sleep(500);
      assert.equal(requests.filter((r) => r === 'POST /api/campaigns').length, before, 'nothing was sent');
      assert.ok(requests.includes('POST /api/compile'));
      await page.screenshot({ path: path.join(docs, 'console-compile-error.png') });

      // Fixing it enables send again.
      await filter.fill("e => e.data.result === 'win'");
      await status.filter({ hasText: 'the filter compiles' }).waitFor();
      await page.locator('#campaign-send:enabled').waitFor();
    });

    await t.test('usable in a narrow window', async () => {
      await page.setViewportSize({ width: 400, height: 860 });
      await sleep(300);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `the page is ${overflow}px wider than the window`);
      for (const id of ['#campaign-send', '#campaign-example', '#campaign-estimate', '#filter', '#event-send', '#event-explain', '#feed-panel', '#campaigns']) {
        const box = await page.locator(id).boundingBox();
        assert.ok(box && box.x >= 0 && box.x + box.width <= 400 + 1, `${id} fits the width: ${JSON.stringify(box)}`);
      }
      await page.screenshot({ path: path.join(docs, 'console-narrow.png'), fullPage: true });
    });

    await t.test('no console error in the browser', () => {
      assert.deepEqual(consoleErrors, []);
    });
    await context.close();
  } finally {
    await browser.close();
    const { code, signal } = await rtcrm.stop();
    assert.ok(code === 0 || signal === 'SIGTERM', `rtcrm dev exited with ${code ?? signal}:\n${rtcrm.log()}`);
  }
});

// Issue 10: a WebAssembly campaign is shown as such (a "wasm" tag, "view" instead of "edit", a note
// instead of an empty JavaScript editor in red); the feed shows the latest triggers when the page
// opens (without toasts); and a toast covers nothing (it lives in the top bar's slot).

/** A minimal filter module (filter-sdk/ABI.md): memory, rtcrm_alloc → 1024, rtcrm_filter → 1. */
function matchEverythingModule() {
  const name = (s) => [s.length, ...Buffer.from(s)];
  const section = (id, bytes) => [id, bytes.length, ...bytes];
  return Buffer.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [2, 0x60, 1, 0x7f, 1, 0x7f, 0x60, 2, 0x7f, 0x7f, 1, 0x7f]),
    ...section(3, [2, 0, 1]),
    ...section(5, [1, 0, 1]),
    ...section(7, [3, ...name('memory'), 2, 0, ...name('rtcrm_alloc'), 0, 0, ...name('rtcrm_filter'), 0, 1]),
    ...section(10, [2, 5, 0, 0x41, 0x80, 0x08, 0x0b, 4, 0, 0x41, 0x01, 0x0b]),
  ]);
}

async function post(base, path, body) {
  const r = await fetch(`${base}${path}`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
  return { status: r.status, body: await r.text() };
}

/** Whether two boxes overlap. */
const overlaps = (a, b) => a && b && a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;

test('the console: Wasm campaigns as such, the latest triggers on open, toasts that cover nothing', { timeout: 240_000 }, async (t) => {
  assert.ok(fs.existsSync(binary), `${binary} is missing: build it with cargo build --release -p rtcrm`);
  assert.ok(fs.existsSync(chromiumPath), `${chromiumPath} is missing: install Debian's chromium (bash scripts/setup.sh)`);
  const rtcrm = await startRtcrm();
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
  const consoleErrors = [];
  try {
    // Before the page opens: a Wasm campaign, and a trigger of campaign 4711 (rtcrm dev loads it).
    const examples = await (await fetch(`${rtcrm.base}/api/examples`)).json();
    const wasm = { campaign_id: 4790, enabled: true, game: 'foe', event_name: 'fight', filter_wasm: matchEverythingModule().toString('base64') };
    const put = await post(rtcrm.base, '/api/campaigns', JSON.stringify(wasm));
    assert.equal(put.status, 202, put.body);
    const sent = await post(rtcrm.base, '/api/events', JSON.stringify({ ...examples.event, event_id: 'before-the-page-opened' }));
    assert.equal(sent.status, 202, sent.body);
    for (let i = 0; ; i++) {
      const r = await (await fetch(`${rtcrm.base}/api/campaigns/4711`)).json();
      if (r.counters.matches >= 1) break;
      assert.ok(i < 150, 'campaign 4711 did not match the event sent before the page opened');
      await sleep(200);
    }

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
    const row = (id) => page.locator(`#campaigns tbody tr[data-id="${id}"]`);

    await t.test('the feed shows the triggers from before the page opened, without a toast', async () => {
      await page.goto(`${rtcrm.base}/`);
      await page.locator('#feed-status', { hasText: 'feed: live' }).waitFor();
      const recent = page.locator('#feed li.recent[data-campaign="4711"]');
      await recent.first().waitFor();
      assert.match(await recent.first().innerText(), /campaign 4711 → player 12345/);
      assert.equal(await page.locator('#feed-empty').isHidden(), true);
      assert.equal(await page.locator('.toast').count(), 0, 'no toast for a replayed trigger');
    });

    await t.test('a Wasm campaign is shown as such, not in the JavaScript editor', async () => {
      await row(4790).locator('.state-active').waitFor();
      await row(4790).locator('.tag-wasm', { hasText: 'wasm' }).waitFor();
      assert.equal(await row(4790).getByRole('button', { name: 'edit' }).count(), 0, 'no "edit" for a Wasm campaign');
      await row(4790).getByRole('button', { name: 'view' }).click();
      const note = page.locator('#wasm-note');
      await note.filter({ hasText: 'WebAssembly filter' }).waitFor();
      assert.match(await note.innerText(), /sha256 [0-9a-f]{64}/);
      assert.match(await note.innerText(), /rtcrm campaign put CAMPAIGN\.json --wasm FILTER\.wasm/);
      assert.equal(await page.locator('#filter-editor').isHidden(), true, 'the JavaScript editor is hidden');
      assert.equal(await page.locator('#filter-editor.invalid').count(), 0, 'nothing in red');
      assert.equal(await page.locator('#compile-status').innerText(), '');
      assert.equal(await page.locator('#campaign-send').isDisabled(), true, 'a digest cannot be sent');
      assert.match(await page.locator('#campaign-send').getAttribute('title'), /rtcrm campaign put/);
      assert.match(await page.locator('#campaign-json').inputValue(), /"filter_wasm_sha256"/);
      await page.screenshot({ path: path.join(docs, 'console-wasm-campaign.png') });
      // Back to a JavaScript campaign: the editor returns and compiles.
      await page.locator('#campaign-example').click();
      await page.locator('#compile-status', { hasText: 'the filter compiles' }).waitFor();
      assert.equal(await page.locator('#filter-editor').isVisible(), true);
      assert.equal(await page.locator('#wasm-note').isHidden(), true);
    });

    for (const [width, height] of [[1280, 800], [400, 860]]) {
      await t.test(`a toast covers nothing (${width} px)`, async () => {
        await page.setViewportSize({ width, height });
        await page.locator('#event-example').click();
        await page.locator('#event-send:enabled').click();
        // Campaigns 4711 and 4790 both trigger: the newest toast replaces the one before.
        const toast = page.locator('.toast', { hasText: /^campaign (4711|4790) triggered for player 12345/ });
        await toast.waitFor();
        const box = await toast.boundingBox();
        for (const id of ['#campaign-panel', '#event-panel', '#feed-panel', '#campaigns-panel', '#ready', '#feed-status']) {
          const other = await page.locator(id).boundingBox();
          assert.ok(!overlaps(box, other), `the toast ${JSON.stringify(box)} covers ${id} ${JSON.stringify(other)}`);
        }
        // Every action button of the table is what a click at its centre reaches.
        const hits = await page.evaluate(() => [...document.querySelectorAll('#campaigns td.actions button')].map((b) => {
          const r = b.getBoundingClientRect();
          b.scrollIntoView({ block: 'center' });
          const s = b.getBoundingClientRect();
          return document.elementFromPoint(s.x + s.width / 2, s.y + s.height / 2) === b || r.width === 0;
        }));
        assert.ok(hits.length > 0 && hits.every(Boolean), `a table action is covered: ${JSON.stringify(hits)}`);
        await page.evaluate(() => window.scrollTo(0, 0));
        await toast.waitFor({ state: 'detached', timeout: 15_000 });
      });
    }

    await t.test('no console error in the browser', () => {
      assert.deepEqual(consoleErrors, []);
    });
    await context.close();
  } finally {
    await browser.close();
    const { code, signal } = await rtcrm.stop();
    assert.ok(code === 0 || signal === 'SIGTERM', `rtcrm dev exited with ${code ?? signal}:\n${rtcrm.log()}`);
  }
});

// Issue 12, item 6: the campaign editor's per-player controls (folded into the campaign JSON,
// with a plain-English preview), the table's controls and per-player counters, and one player's
// state looked up for a support question.

test('the console: per-player controls, their preview, the table and a player\'s state', { timeout: 240_000 }, async (t) => {
  assert.ok(fs.existsSync(binary), `${binary} is missing: build it with cargo build --release -p rtcrm`);
  assert.ok(fs.existsSync(chromiumPath), `${chromiumPath} is missing: install Debian's chromium (bash scripts/setup.sh)`);
  const rtcrm = await startRtcrm();
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs });
  const consoleErrors = [];
  const posted = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.setDefaultTimeout(20_000);
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
    page.on('request', (r) => { if (r.method() === 'POST' && new URL(r.url()).pathname === '/api/campaigns') posted.push(r.postData()); });
    const row = (id) => page.locator(`#campaigns tbody tr[data-id="${id}"]`);
    const preview = page.locator('#controls-preview');
    await page.goto(`${rtcrm.base}/`);
    await page.locator('#ready', { hasText: 'ready' }).waitFor();

    await t.test('the preview says what the controls mean, and what is wrong with them', async () => {
      const describe = (c) => page.evaluate((x) => window.rtcrmControls.describe(x), c);
      assert.deepEqual(await describe({}), { text: 'no per-player controls: every match triggers', errors: [] });
      assert.deepEqual(await describe({ cooldown: '1h', count: { at_least: 3, within: '10m' }, holdout_percent: 20 }), {
        text: 'triggers on the 3rd match within 10m, then counts again; at most once per 1h per player; 20 % of players held out as control group (to the control topic, never messaged)',
        errors: [],
      });
      assert.equal((await describe({ max_triggers_per_player: 1, inactivity: 'P7D', state: { ttl: '30d', max_bytes: 512 }, state_version: 2 })).text,
        "triggers when a player has had no matching event for 7d (with the last one); at most 1 trigger per player, ever; filter(event, state) keeps up to 512 bytes per player, forgotten after 30d untouched; state version 2 (changing it resets every player's state)");
      assert.equal((await describe({ count: { at_least: 22, within: '1h 30m' }, max_triggers_per_player: 12 })).text,
        'triggers on the 22nd match within 1h 30m, then counts again; at most 12 triggers per player');
      assert.deepEqual((await describe({ cooldown: '3 months', holdout_percent: 12.345, variants: [{ name: 'A', weight: 1 }, { name: 'A', weight: 2 }], inactivity: '7d', count: { at_least: 2, within: '1d' } })).errors, [
        'cooldown `3 months`: months and years have no fixed length; use days ("30d")',
        'holdout_percent `12.345` has more than two decimals',
        'variants: the name `A` appears twice',
        'inactivity and count cannot be combined: inactivity triggers on the absence of matches',
      ]);
    });

    await t.test('the controls editor folds the controls into the campaign JSON that is sent', async () => {
      await page.locator('#campaign-example').click();
      await page.locator('#compile-status', { hasText: 'the filter compiles' }).waitFor();
      assert.equal(await preview.innerText(), 'no per-player controls: every match triggers', 'the example has none');
      const campaign = JSON.parse(await page.locator('#campaign-json').inputValue());
      campaign.campaign_id = 4720;
      await page.locator('#campaign-json').fill(JSON.stringify(campaign, null, 2));
      await page.locator('#controls summary').click();
      await page.locator('#ctl-cooldown').fill('1h');
      await page.locator('#ctl-count-at-least').fill('3');
      await page.locator('#ctl-count-within').fill('10m');
      await page.locator('#ctl-holdout').fill('20');
      await page.locator('#ctl-variants').fill('A:1, B:3');
      const expected = 'triggers on the 3rd match within 10m, then counts again; at most once per 1h per player; 20 % of players held out as control group (to the control topic, never messaged); variants A 25 % · B 75 %';
      assert.equal(await preview.innerText(), expected);
      // A state option checks "filter(event, state)"; unchecking removes `state` again.
      await page.locator('#ctl-state-ttl').fill('30d');
      assert.equal(await page.locator('#ctl-state').isChecked(), true);
      assert.match(await preview.innerText(), /; filter\(event, state\) keeps up to 1,024 bytes per player, forgotten after 30d untouched$/);
      await page.locator('#ctl-state').uncheck();
      assert.equal(await preview.innerText(), expected);
      // A mistake is shown in the preview, and goes when corrected.
      await page.locator('#ctl-cooldown').fill('soon');
      await preview.filter({ hasText: 'cooldown `soon`: not a duration' }).waitFor();
      assert.match(await preview.getAttribute('class'), /\bbad\b/);
      await page.locator('#ctl-cooldown').fill('1h');
      assert.equal(await preview.innerText(), expected);
      const json = JSON.parse(await page.locator('#campaign-json').inputValue());
      assert.deepEqual({ cooldown: json.cooldown, count: json.count, holdout_percent: json.holdout_percent, variants: json.variants, state: json.state },
        { cooldown: '1h', count: { at_least: 3, within: '10m' }, holdout_percent: 20, variants: [{ name: 'A', weight: 1 }, { name: 'B', weight: 3 }], state: undefined });
      assert.equal(json.filter, campaign.filter, 'the other fields are untouched');
      await page.locator('#compile-status', { hasText: 'the filter compiles' }).waitFor();
      await page.locator('#campaign-send:enabled').click();
      await page.locator('#campaign-result', { hasText: 'campaign 4720 sent to crm-campaigns' }).waitFor();
      const sent = JSON.parse(posted[posted.length - 1]);
      assert.deepEqual([sent.campaign_id, sent.cooldown, sent.count, sent.holdout_percent, sent.variants],
        [4720, '1h', { at_least: 3, within: '10m' }, 20, [{ name: 'A', weight: 1 }, { name: 'B', weight: 3 }]]);
      // Loading it back from the table fills the form.
      await row(4720).locator('.state-active').waitFor();
      await page.locator('#campaign-json').fill('{}');
      assert.equal(await page.locator('#ctl-cooldown').inputValue(), '');
      await row(4720).getByRole('button', { name: 'edit' }).click();
      assert.equal(await page.locator('#ctl-cooldown').inputValue(), '1h');
      assert.equal(await page.locator('#ctl-variants').inputValue(), 'A:1, B:3');
      assert.equal(await preview.innerText(), expected);
    });

    await t.test('the table shows the controls and the per-player counters; a player\'s state is looked up', async () => {
      assert.equal(await row(4720).locator('td.controls .given').innerText(), '3 in 10m · cooldown 1h · holdout 20 % · A/B');
      assert.equal(await row(4720).locator('td.controls').getAttribute('title'),
        'triggers on the 3rd match within 10m, then counts again; at most once per 1h per player; 20 % of players held out as control group (to the control topic, never messaged); variants A 25 % · B 75 %');
      assert.equal(await row(4711).locator('td.controls').innerText(), '–', 'no controls, nothing counted');
      // Two losses of player 12345 within a minute: counted, no trigger yet.
      const examples = await (await fetch(`${rtcrm.base}/api/examples`)).json();
      for (const [id, at] of [['c-1', '2023-11-20T11:00:00.000Z'], ['c-2', '2023-11-20T11:01:00.000Z']]) {
        const r = await post(rtcrm.base, '/api/events', JSON.stringify({ ...examples.event, event_id: id, created_at: at }));
        assert.equal(r.status, 202, r.body);
      }
      await row(4720).locator('td.controls .counts', { hasText: /^1 state \(\d+ B\) · suppressed: count 2$/ }).waitFor();
      await row(4720).getByRole('button', { name: 'player…' }).click();
      assert.equal(await page.locator('#lookup-campaign').inputValue(), '4720');
      await page.locator('#lookup-player').fill('12345');
      await page.locator('#lookup-go').click();
      const result = page.locator('#lookup-result');
      await result.filter({ hasText: /^stored state: 0 triggers so far; 2 of 3 matches counted$/ }).waitFor();
      const line = (label) => page.locator(`#lookup-lines [data-line="${label}"] dd`).innerText();
      assert.match(await line('count'), /^2 of 3 matches within 10m: 2023-11-20T11:00:00\.000Z, 2023-11-20T11:01:00\.000Z \(2 inside the window now\)$/);
      assert.equal(await line('cooldown'), '1h: none yet (no trigger)');
      assert.match(await line('group'), /^(live|control) \(bucket \d+ of 10000; 20 % held out\)/);
      // The README's screenshot: the controls open, the table and the lookup, in a taller window.
      await page.setViewportSize({ width: 1280, height: 960 });
      await page.locator('#controls').evaluate((d) => { d.open = true; });
      await sleep(300);
      await page.screenshot({ path: path.join(docs, 'console-controls.png') });
      await page.setViewportSize({ width: 1280, height: 800 });
      // Unknown campaign, and a player without state.
      await page.locator('#lookup-campaign').fill('999');
      await page.locator('#lookup-go').click();
      await result.filter({ hasText: 'campaign 999 is unknown' }).waitFor();
      assert.equal(await page.locator('#lookup-lines').isHidden(), true);
      await page.locator('#lookup-campaign').fill('4720');
      await page.locator('#lookup-player').fill('777');
      await page.locator('#lookup-go').click();
      await result.filter({ hasText: /^no state: player 777 has no stored state for campaign 4720/ }).waitFor();
    });

    await t.test('no console error in the browser but the unknown campaign\'s 404', () => {
      // Chromium logs every 4xx answer of fetch; the lookup of campaign 999 is the one expected.
      assert.deepEqual(consoleErrors, ['console: Failed to load resource: the server responded with a status of 404 (Not Found)']);
    });
    await context.close();
  } finally {
    await browser.close();
    const { code, signal } = await rtcrm.stop();
    assert.ok(code === 0 || signal === 'SIGTERM', `rtcrm dev exited with ${code ?? signal}:\n${rtcrm.log()}`);
  }
});
