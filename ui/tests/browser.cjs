// The web console in headless Chromium (Debian's), driven by Playwright
// (playwright-core from npm; it downloads no browser). Run by the
// end-to-end test `e2e::ui` against a running stack:
//
//   UI_URL=http://127.0.0.1:8070 UI_USER=tributary UI_PASSWORD=... \
//   UI_ALERT_PREFIX=... NODE_PATH=~/.cache/tributary/node/node_modules \
//   node ui/tests/browser.cjs
//
// Every check prints `ok <name>`; the first failure prints `FAILED <name>`
// with the reason and the page's text, and exits 1.
'use strict';

const fs = require('fs');
const { chromium } = require('playwright-core');

const BASE = process.env.UI_URL;
const USER = process.env.UI_USER;
const PASSWORD = process.env.UI_PASSWORD;
const ALERT_PREFIX = process.env.UI_ALERT_PREFIX;
const EVIDENCE_ALERT = process.env.UI_EVIDENCE_ALERT;
const EVIDENCE_ORDER = process.env.UI_EVIDENCE_ORDER;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 30000;
const SHOTS = process.env.UI_SCREENSHOTS;

function assert(ok, message) {
  if (!ok) throw new Error(message);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    // The machine has no network: no background connections, no updates.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const dialogs = [];
  page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
  let step = 'start';
  if (SHOTS) fs.mkdirSync(SHOTS, { recursive: true });
  // A picture of the page as it is, for people to look at (test artefacts).
  const shot = async (name) => {
    if (SHOTS) await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
  };
  // How long the page took to load (navigation start to the load event).
  const timing = async (path) => {
    await page.waitForLoadState('load');
    const ms = await page.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0];
      return Math.round(n.loadEventEnd - n.startTime);
    });
    console.log(`load ${path} ${ms} ms`);
  };
  const check = async (name, fn) => {
    step = name;
    await fn();
    console.log('ok ' + name);
  };

  try {
    await check('a page asks for a login first', async () => {
      await page.goto(BASE + '/lake');
      assert(new URL(page.url()).pathname === '/login', 'at ' + page.url());
      await shot('login');
      const r = await page.request.get(BASE + '/api/schema');
      assert(r.status() === 401, 'the API answered ' + r.status() + ' without a login');
    });

    await check('a wrong password is refused', async () => {
      await page.fill('input[name=password]', 'not-the-password');
      await page.click('button[type=submit]');
      await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0);
      const text = await page.textContent('#login-error');
      assert(/wrong user or password/.test(text), text);
    });

    await check('the right password logs in, with an HttpOnly SameSite cookie, back to the page asked for', async () => {
      await page.fill('input[name=user]', USER);
      await page.fill('input[name=password]', PASSWORD);
      await page.click('button[type=submit]');
      await page.waitForURL(BASE + '/lake');
      const cookies = await context.cookies();
      const c = cookies.find((x) => x.name === 'tributary_ui');
      assert(c && c.httpOnly && c.sameSite === 'Strict', JSON.stringify(cookies));
      const seen = await page.evaluate(() => document.cookie);
      assert(!seen.includes('tributary_ui'), 'a script can read the session cookie');
    });

    await check('the pipeline page shows components, tables and lineage, and its charts move while load runs', async () => {
      await page.goto(BASE + '/pipeline');
      await timing('/pipeline');
      const broker = page.locator('table.components tr', { hasText: 'broker' }).first();
      await broker.waitFor();
      assert(/ok/.test(await broker.locator('td').first().textContent()), await broker.textContent());
      assert(await page.locator('table.tables tr[data-table=orders]').count() === 1, 'no orders row');
      const gold = await page.locator('table.lineage tr', { hasText: 'silver.orders' }).textContent();
      assert(/gold\.fct_order_line/.test(gold), gold);
      // Changes keep arriving (the test runs a load): the sum of silver's
      // versions, as the page charts them, grows from refresh to refresh.
      const versions = () => Array.from(document.querySelectorAll('table.tables td.version .num'))
        .reduce((sum, e) => sum + Number(e.textContent), 0);
      const first = await page.evaluate(versions);
      await page.waitForFunction((f) => Array.from(document.querySelectorAll('table.tables td.version .num'))
        .reduce((sum, e) => sum + Number(e.textContent), 0) > f, first, { timeout: 30000 })
        .catch(() => { throw new Error('silver stayed at versions summing to ' + first); });
      const points = await page.getAttribute('table.tables tr[data-table=customers] td.version polyline', 'points');
      assert(points.split(' ').length >= 2, 'one point: ' + points);
      await shot('pipeline');
    });

    await check('the lake page lists the tables with rows and versions', async () => {
      await page.goto(BASE + '/lake');
      await timing('/lake');
      const row = page.locator('table.lake tr', { hasText: 'orders' }).first();
      await row.waitFor();
      const cells = await row.locator('td').allTextContents();
      assert(Number(cells[1]) >= 1 && Number(cells[2]) > 0, 'orders: ' + cells.join(' | '));
      await shot('lake');
    });

    await check("a table's page shows columns, files, history and a preview of an older version", async () => {
      await page.goto(BASE + '/lake/silver/orders');
      await timing('/lake/silver/orders');
      await page.locator('table.history-table tbody tr').first().waitFor();
      const columns = await page.locator('h2:text("Columns") + .grid-wrap td').allTextContents();
      assert(columns.includes('customer_id'), columns.join(','));
      const files = await page.textContent('details.files summary');
      assert(/Files \([1-9]\d*\)/.test(files), files);
      const versions = await page.locator('table.history-table tbody tr').count();
      assert(versions >= 2, versions + ' commits');
      await page.locator('table.history-table tbody tr').last().locator('a', { hasText: 'preview' }).click();
      await page.waitForSelector('h2#preview');
      const title = await page.textContent('h2#preview');
      assert(/at version \d+/.test(title), title);
      await shot('lake-table');
    });

    await check('a query in the URL runs, and its grid shows the rows', async () => {
      const q = 'SELECT status, count(*) AS n FROM silver.orders GROUP BY status ORDER BY status';
      await page.goto(BASE + '/sql?chart=bar&q=' + encodeURIComponent(q));
      await page.waitForSelector('#grid tbody tr');
      const rows = await page.locator('#grid tbody tr').count();
      assert(rows >= 1, rows + ' rows');
      const header = await page.locator('#grid th').allTextContents();
      assert(header[0].startsWith('status') && header[1].startsWith('n'), header.join(','));
    });

    await check('a bar chart of the result is drawn from the link', async () => {
      await page.waitForSelector('svg.chart[data-kind=bar] .series rect');
      const bars = await page.locator('svg.chart .series rect').count();
      const rows = await page.locator('#grid tbody tr').count();
      assert(bars === rows, bars + ' bars for ' + rows + ' rows');
      await shot('sql-bar-chart');
    });

    await check('a time series gets a time axis', async () => {
      const q = "SELECT date_trunc('second', created_at) AS second, count(*) AS orders FROM silver.orders GROUP BY 1 ORDER BY 1";
      await page.goto(BASE + '/sql?chart=line&q=' + encodeURIComponent(q));
      await page.waitForSelector('svg.chart[data-kind=line] .series circle');
      const points = await page.locator('svg.chart .series circle').count();
      const rows = Number((await page.textContent('#rowcount')).split(' ')[0]);
      assert(points === rows && rows >= 2, points + ' points for ' + rows + ' rows');
      await shot('sql-time-series');
      const ticks = await page.locator('svg.chart text.tick-time').allTextContents();
      assert(ticks.length >= 1 && ticks.every((t) => /^\d\d:\d\d(:\d\d)?$|^\d{4}-\d\d-\d\d$/.test(t)), ticks.join(','));
    });

    await check('the chart kind is one click, and the URL keeps it', async () => {
      await page.click('.kinds button[data-kind=scatter]');
      await page.waitForSelector('svg.chart[data-kind=scatter] circle');
      assert(new URL(page.url()).searchParams.get('chart') === 'scatter', page.url());
    });

    await check('clicking a header sorts the grid', async () => {
      await page.click('#grid th >> nth=1');
      await page.waitForSelector('#grid th[aria-sort=ascending]');
      const values = (await page.locator('#grid tbody tr td:nth-child(2)').allTextContents()).map(Number);
      const sorted = values.slice().sort((a, b) => a - b);
      assert(JSON.stringify(values) === JSON.stringify(sorted), values.join(','));
    });

    await check('Ctrl+Enter runs what was typed', async () => {
      await page.goto(BASE + '/sql');
      await timing('/sql');
      await page.click('#query');
      await page.keyboard.type('SELECT 40 + 2 AS answer');
      await page.keyboard.press('Control+Enter');
      await page.waitForSelector('#grid tbody tr');
      assert((await page.textContent('#grid tbody td')) === '42', await page.textContent('#grid'));
      assert(new URL(page.url()).searchParams.get('q') === 'SELECT 40 + 2 AS answer', page.url());
    });

    await check('the editor highlights keywords and completes tables', async () => {
      assert(await page.locator('#highlight .tok-keyword', { hasText: 'SELECT' }).count() === 1, 'no keyword highlighted');
      await page.waitForSelector('body[data-catalog=loaded]');
      await page.fill('#query', '');
      await page.click('#query');
      await page.keyboard.type('SELECT * FROM silver.ord');
      await page.waitForSelector('#complete li:text("orders")');
      const first = await page.textContent('#complete li[aria-selected=true]');
      assert(first === 'orders', 'first choice ' + first);
      await page.keyboard.press('ArrowDown');
      assert(await page.textContent('#complete li[aria-selected=true]') === 'order_items', 'ArrowDown');
      await page.keyboard.press('ArrowUp');
      await page.keyboard.press('Tab');
      const text = await page.inputValue('#query');
      assert(text === 'SELECT * FROM silver.orders', text);
    });

    await check('an error is shown at its place in the SQL', async () => {
      await page.fill('#query', 'SELECT id,\n  no_such_column\nFROM silver.orders');
      await page.click('#run');
      await page.waitForSelector('#error:not([hidden])');
      const message = await page.textContent('#error');
      assert(/no_such_column/.test(message) && /line 2/.test(message), message);
      const marked = await page.textContent('#highlight .tok-error');
      assert(marked === 'no_such_column', 'marked: ' + marked);
      await shot('sql-error');
    });

    await check('table data is shown as text, never run as markup', async () => {
      const evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>';
      await page.fill('#query', `SELECT '${evil}' AS v`);
      await page.click('#run');
      await page.waitForSelector('#grid th:text("v")');
      assert((await page.textContent('#grid tbody td')) === evil, await page.textContent('#grid tbody td'));
      assert(await page.locator('#grid img, #grid script').count() === 0, 'markup from data became elements');
      assert(await page.evaluate(() => window.pwned) === undefined, 'a script from data ran');
      assert(dialogs.length === 0, 'dialogs: ' + dialogs.join(','));
    });

    await check('EXPLAIN is shown as a tree', async () => {
      await page.fill('#query', 'SELECT status, count(*) FROM silver.orders WHERE total > 10 GROUP BY status');
      await page.click('#explain');
      await page.waitForSelector('#plan:not([hidden]) ul.tree li ul li');
      const nodes = await page.locator('#plan ul.tree .node').allTextContents();
      assert(nodes.some((n) => /Aggregate/.test(n)), nodes.join(' / '));
      await shot('sql-explain');
    });

    await check('the whole result downloads as CSV and as Parquet', async () => {
      // The first ten orders: a result that orders arriving meanwhile do not change.
      await page.fill('#query', 'SELECT id, status FROM silver.orders ORDER BY id LIMIT 10');
      await page.click('#run');
      await page.waitForSelector('#grid th:text("status")');
      const rows = Number((await page.textContent('#rowcount')).split(' ')[0]);
      const [csv] = await Promise.all([page.waitForEvent('download'), page.click('#csv')]);
      const text = fs.readFileSync(await csv.path(), 'utf8').trim().split('\n');
      assert(text[0] === 'id,status' && text.length === rows + 1, text.length + ' lines for ' + rows + ' rows');
      const [parquet] = await Promise.all([page.waitForEvent('download'), page.click('#parquet')]);
      const bytes = fs.readFileSync(await parquet.path());
      assert(bytes.slice(0, 4).toString() === 'PAR1' && bytes.slice(-4).toString() === 'PAR1', 'not a Parquet file');
    });

    await check('Copy puts the rows on the clipboard', async () => {
      await page.click('#copy');
      const copied = await page.evaluate(() => navigator.clipboard.readText());
      assert(copied.startsWith('id\tstatus\n'), copied.slice(0, 40));
    });

    await check('a running query can be cancelled', async () => {
      // About an hour and a half of work on this machine, unless cancelled.
      await page.fill('#query', 'SELECT count(*) FROM generate_series(1, 1000000000000) AS t(v) WHERE v % 7 = 3');
      await page.click('#run');
      await page.waitForSelector('#cancel:not([disabled])');
      await page.waitForTimeout(300);
      await page.click('#cancel');
      await page.waitForSelector('#error:not([hidden])');
      const message = await page.textContent('#error');
      assert(/cancelled/.test(message), message);
      // The server is free again: the next query answers at once.
      await page.fill('#query', 'SELECT 1 AS after_cancel');
      await page.click('#run');
      await page.waitForSelector('#grid th:text("after_cancel")', { timeout: 5000 });
    });

    await check('query history keeps what ran', async () => {
      const items = await page.locator('#history li').allTextContents();
      assert(items.some((t) => t.includes('SELECT 40 + 2 AS answer')), items.slice(0, 5).join(' / '));
    });

    await check('a state-changing request without the console header is refused', async () => {
      const status = await page.evaluate(async () => (await fetch('/api/query', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"sql":"SELECT 1"}',
      })).status);
      assert(status === 403, 'answered ' + status);
    });

    await check('the workflows page lists the jobs and their DAG, and Trigger queues a run', async () => {
      await page.goto(BASE + '/workflows');
      await timing('/workflows');
      const jobs = await page.locator('table.jobs tbody tr').count();
      assert(jobs >= 3, jobs + ' jobs');
      assert((await page.textContent('pre.dag')).length > 0, 'no DAG');
      const row = page.locator('table.jobs tbody tr').first();
      const job = await row.getAttribute('data-job');
      await row.locator('form.trigger button').click();
      await page.waitForSelector('#workflows-message.ok');
      await page.waitForSelector(`table.runs tr[data-job="${job}"]`, { timeout: 15000 });
      const state = await page.locator(`table.runs tr[data-job="${job}"] .badge`).first().textContent();
      assert(['queued', 'running', 'succeeded', 'failed', 'retrying'].includes(state), state);
      assert(await page.locator('.timeline svg rect').count() >= 1, 'no timeline');
      await shot('workflows');
      await page.locator(`table.runs tr[data-job="${job}"] a`).first().click();
      await page.waitForSelector('dl.facts');
      await shot('workflows-run');
    });

    await check('the fraud page receives alerts live', async () => {
      await page.goto(BASE + '/fraud');
      await timing('/fraud');
      await page.waitForSelector('#feed-state.ok');
      await page.waitForSelector(`#alerts tr[data-alert^="${ALERT_PREFIX}"]`, { timeout: 60000 });
      const row = await page.locator(`#alerts tr[data-alert^="${ALERT_PREFIX}"]`).first().textContent();
      assert(/velocity/.test(row) && row.includes('<b>not markup</b>'), row);
      assert(await page.locator('table.rules tbody tr').count() === 7, 'rules table');
      await shot('fraud');
    });

    await check("an alert's evidence shows the orders of its window", async () => {
      await page.goto(BASE + '/fraud');
      const row = page.locator('#alerts tr', { hasText: 'written by e2e::ui' }).first();
      await row.waitFor();
      await row.locator('a', { hasText: 'evidence' }).click();
      await page.waitForSelector('h2:text("Orders in the window")');
      assert((await page.textContent('h1')) === EVIDENCE_ALERT, await page.textContent('h1'));
      const table = page.locator('h2:text("Orders in the window") + p + .grid-wrap table');
      const at = (await table.locator('th').allTextContents()).indexOf('id');
      assert(at >= 0, 'no id column');
      const ids = await table.locator(`tbody tr td:nth-child(${at + 1})`).allTextContents();
      assert(ids.includes(EVIDENCE_ORDER), 'orders ' + ids.join(',') + ', not ' + EVIDENCE_ORDER);
      await shot('fraud-evidence');
    });

    await check('the pages fit a phone', async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      for (const path of ['/sql', '/lake', '/pipeline', '/workflows', '/fraud']) {
        await page.goto(BASE + path);
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert(overflow <= 1, path + ' is ' + overflow + ' px wider than the phone');
        await shot('phone' + path.replace('/', '-'));
      }
    });

    await check('logging out ends the session', async () => {
      await page.click('#logout');
      await page.waitForURL(BASE + '/login');
      const r = await page.request.get(BASE + '/api/schema');
      assert(r.status() === 401, 'answered ' + r.status() + ' after logout');
    });
  } catch (e) {
    console.log(`FAILED ${step}: ${e.message}`);
    const text = await page.evaluate(() => document.body && document.body.innerText).catch(() => '');
    console.log('--- page ' + page.url() + '\n' + String(text).slice(0, 3000));
    await browser.close();
    process.exit(1);
  }
  await browser.close();
}

main().catch((e) => {
  console.log('FAILED to start: ' + e.stack);
  process.exit(1);
});
