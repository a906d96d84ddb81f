// The SDK on the company's own site (SPEC §6, issue 24), in real Chromium:
// - a bank page on a second origin served by this test (docs/examples/sdk-page, the
//   README's snippet as written) with the broker on its own address: allowed with
//   --allowed-origin, and refused (`blocked` at once) without it;
// - the broker under /idv/ of one origin, behind Debian's nginx configured by the very
//   file docs/examples/nginx-idv.conf: the demo and the hosted page end to end.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import {
  ARTIFACTS,
  DESKTOP,
  PHONE,
  TIMEOUT,
  deviceJwt,
  launchBrowser,
  makeJpeg,
  shot,
  startBroker,
  waitForText,
  watch,
} from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const EXAMPLE = join(root, 'docs', 'examples', 'sdk-page');
const NGINX_RECIPE = join(root, 'docs', 'examples', 'nginx-idv.conf');
const NGINX = process.env.NGINX_PATH || '/usr/sbin/nginx';

const API_KEY = 'e2e-bank-api-key-0123456789';
const ISSUER = 'bank-app';
const ISSUER_SECRET = 'e2e-bank-issuer-secret-0123456789';

/** Chromium logs each request that CORS blocks (and the failed fetch) as a console error. */
const CORS_NOISE = [/blocked by CORS policy/, /net::ERR_FAILED/, /WebSocket connection to .* failed/];

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** A free TCP port on loopback (for a server that cannot listen on port 0 and tell). */
async function freePort() {
  const server = http.createServer();
  await new Promise((res) => server.listen(0, '127.0.0.1', res));
  const { port } = server.address();
  await new Promise((res) => server.close(res));
  return port;
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The bank's site on its own origin: the example page of docs/examples/sdk-page (with
 * the broker's address put in place of https://idv.example.com), and the two backend
 * routes docs/sdk.md tells an integrator to write, holding the API key server-side.
 */
async function startBankSite(brokerUrl, port = 0) {
  const page = readFileSync(join(EXAMPLE, 'index.html'), 'utf8').replaceAll('https://idv.example.com', brokerUrl);
  const script = readFileSync(join(EXAMPLE, 'verify-with-phone.js'), 'utf8');
  const server = http.createServer(async (req, res) => {
    const send = (status, type, body) => {
      res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
      res.end(body);
    };
    try {
      const path = new URL(req.url, 'http://bank').pathname;
      if (req.method === 'GET' && path === '/') return send(200, 'text/html; charset=utf-8', page);
      if (req.method === 'GET' && path === '/js/verify-with-phone.js') return send(200, 'application/javascript', script);
      if (req.method === 'GET' && path === '/welcome') {
        return send(200, 'text/html; charset=utf-8', '<!doctype html><html lang="en"><title>Welcome</title><link rel="icon" href="data:,"><h1>Welcome, verified customer</h1></html>');
      }
      if (req.method === 'POST' && path === '/api/idv/sessions') {
        await readBody(req);
        const created = await fetch(`${brokerUrl}/v1/sessions`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'X-Api-Key': API_KEY },
          body: JSON.stringify({ scopes: ['full_name'], vendor_data: 'customer-7' }),
        });
        return send(created.status, 'application/json', await created.text());
      }
      const result = path.match(/^\/api\/idv\/sessions\/([0-9a-f-]{36})\/result$/);
      if (req.method === 'POST' && result) {
        await readBody(req);
        const decision = await fetch(`${brokerUrl}/v1/sessions/${result[1]}/decision`, {
          headers: { 'X-Api-Key': API_KEY },
        });
        const body = await decision.json();
        if (body.status !== 'confirmed' || body.vendor_data !== 'customer-7') return send(409, 'application/json', '{}');
        return send(200, 'application/json', JSON.stringify({ next: '/welcome' }));
      }
      send(404, 'text/plain', 'not found');
    } catch (e) {
      send(500, 'text/plain', String(e));
    }
  });
  await new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(port, '127.0.0.1', res);
  });
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    stop: () => new Promise((res) => server.close(res)),
  };
}

/** The bank's broker: its own address, the bank's key and app issuer, and `args`. */
function startBankBroker(name, args = []) {
  return startBroker(name, {
    args: ['--api-key', `Example Bank=${API_KEY}`, '--issuer', `${ISSUER}=${ISSUER_SECRET}`, ...args],
  });
}

/** The phone, as the bank's app does it: the device API with its own JWT. */
async function phone(brokerUrl, sessionId, action) {
  const auth = { Authorization: `Bearer ${deviceJwt(ISSUER, ISSUER_SECRET, 'customer-7')}` };
  const res =
    action === 'open'
      ? await fetch(`${brokerUrl}/v1/sessions/${sessionId}/information`, { headers: auth })
      : await fetch(`${brokerUrl}/v1/sessions/${sessionId}/update`, {
          method: 'POST',
          headers: { ...auth, 'Content-Type': 'application/json' },
          body: JSON.stringify({ decision: 'approve', shared_data: { full_name: 'Ada Lovelace' } }),
        });
  assert.equal(res.status, 200, `${action}: ${await res.text()}`);
}

/** The bank page shows a real, decoded QR image; returns the session id it is for. */
async function qrShown(page) {
  await page.waitForFunction(
    () => {
      const img = document.querySelector('#qr img');
      return img && img.complete && img.naturalWidth > 0;
    },
    null,
    { timeout: TIMEOUT }
  );
  return page.locator('#qr img').getAttribute('data-session-id');
}

/** The WebSocket handshake's HTTP status for a page at `origin`. */
function handshakeStatus(brokerUrl, path, origin) {
  return new Promise((res, rej) => {
    const req = http.request(`${brokerUrl}${path}`, {
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
        Origin: origin,
      },
    });
    req.on('upgrade', (response, socket) => {
      socket.destroy();
      res(response.statusCode);
    });
    req.on('response', (response) => {
      response.resume();
      res(response.statusCode);
    });
    req.on('error', rej);
    req.end();
  });
}

async function statusText(page) {
  return (await page.locator('#status').textContent()).trim();
}

describe('the SDK on a page of another origin', () => {
  test('the README and docs/sdk.md show the very script these tests serve', () => {
    const script = readFileSync(join(EXAMPLE, 'verify-with-phone.js'), 'utf8');
    for (const doc of ['README.md', join('docs', 'sdk.md')]) {
      assert.ok(readFileSync(join(root, doc), 'utf8').includes(script), `${doc} shows docs/examples/sdk-page/verify-with-phone.js as is`);
    }
  });

  test('listed with --allowed-origin: the QR shows, WebSocket updates arrive, and the README snippet reaches onSuccess', async () => {
    // The bank's origin must be known before the broker starts: take the port first.
    const bankPort = await freePort();
    const listed = await startBankBroker('origin-allowed', ['--allowed-origin', `http://127.0.0.1:${bankPort}`]);
    const bank = await startBankSite(listed.baseUrl, bankPort);
    let ctx;
    try {
      ctx = await browser.newContext(DESKTOP);
      const page = await ctx.newPage();
      const watcher = await watch(page, 'bank page');
      const sockets = [];
      page.on('websocket', (ws) => sockets.push(ws.url()));
      await page.goto(`${bank.origin}/`);
      const sessionId = await qrShown(page);
      await page.locator('#status').filter({ hasText: /^initialized$/ }).waitFor({ timeout: TIMEOUT });
      await shot(page, 'origin-allowed-1-qr');

      await phone(listed.baseUrl, sessionId, 'open');
      await page.locator('#status').filter({ hasText: /^retrieved$/ }).waitFor({ timeout: TIMEOUT });
      assert.ok(sockets.some((u) => u.startsWith(listed.baseUrl.replace('http', 'ws'))), 'updates came over a WebSocket');

      await phone(listed.baseUrl, sessionId, 'approve');
      // handleVerify → the bank backend reads the decision → onSuccess → /welcome.
      await page.waitForURL(`${bank.origin}/welcome`, { timeout: TIMEOUT });
      watcher.assertClean();
    } finally {
      await ctx?.close().catch(() => {});
      await bank.stop();
      await listed.stop();
    }
  });

  test('listed with --allowed-origin and WebSockets blocked: the long-poll delivers the outcome', async () => {
    // The bank's origin must be known before the broker starts: take the port first.
    const bankPort = await freePort();
    const broker = await startBankBroker('origin-longpoll', ['--allowed-origin', `http://127.0.0.1:${bankPort}`]);
    const bank = await startBankSite(broker.baseUrl, bankPort);
    const ctx = await browser.newContext(DESKTOP);
    try {
      await ctx.routeWebSocket(/\/v1\/sessions\/[^/]+\/ws/, (ws) => ws.close({ code: 1011, reason: 'blocked by the test' }));
      const polls = [];
      const page = await ctx.newPage();
      page.on('requestfinished', (req) => {
        if (/\/status\?wait=/.test(req.url())) polls.push(req.url());
      });
      const watcher = await watch(page, 'bank page, long-poll');
      await page.goto(`${bank.origin}/`);
      const sessionId = await qrShown(page);
      await page.locator('#status').filter({ hasText: /^initialized$/ }).waitFor({ timeout: TIMEOUT });

      await phone(broker.baseUrl, sessionId, 'open');
      await page.locator('#status').filter({ hasText: /^retrieved$/ }).waitFor({ timeout: TIMEOUT });
      await phone(broker.baseUrl, sessionId, 'approve');
      await page.waitForURL(`${bank.origin}/welcome`, { timeout: TIMEOUT });
      assert.ok(polls.length >= 2, `the outcome came by long-poll: ${polls.join(', ')}`);
      watcher.assertClean();
    } finally {
      await ctx.close().catch(() => {});
      await bank.stop();
      await broker.stop();
    }
  });

  test('not listed: onError says blocked within 2 s, naming the broker and the page, and the WebSocket handshake is 403', async () => {
    const broker = await startBankBroker('origin-refused');
    const bank = await startBankSite(broker.baseUrl);
    const ctx = await browser.newContext(DESKTOP);
    try {
      const page = await ctx.newPage();
      const watcher = await watch(page, 'bank page, not allowed', { allow: CORS_NOISE });
      await page.goto(`${bank.origin}/`);
      // The snippet's onError writes `${code}: ${message}` into #status.
      await page.locator('#status').filter({ hasText: /^blocked: / }).waitFor({ timeout: 2_000 });
      const text = await statusText(page);
      assert.ok(text.includes(broker.baseUrl), `names the broker: ${text}`);
      assert.ok(text.includes(bank.origin), `names the page's origin: ${text}`);
      assert.ok(text.includes('--allowed-origin'), `says what to do: ${text}`);
      assert.equal(await page.locator('#qr img').count(), 0, 'no QR');
      await shot(page, 'origin-refused-1-blocked');
      watcher.assertClean();

      // The handshake a page of that origin would make is refused by the broker itself.
      const created = await fetch(`${broker.baseUrl}/v1/sessions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Api-Key': API_KEY },
        body: JSON.stringify({ scopes: ['full_name'] }),
      }).then((r) => r.json());
      const path = `/v1/sessions/${created.session_id}/ws?token=${created.session_token}`;
      assert.equal(await handshakeStatus(broker.baseUrl, path, bank.origin), 403);
      assert.equal(await handshakeStatus(broker.baseUrl, path, broker.baseUrl), 101);
    } finally {
      await ctx.close().catch(() => {});
      await bank.stop();
      await broker.stop();
    }
  });
});

/**
 * Starts Debian's nginx in the foreground on `port` of loopback, with a temporary
 * prefix, proxying to `brokerUrl` through the recipe file, included as it is.
 */
async function startNginx(name, port, brokerUrl) {
  const dir = mkdtempSync(join(tmpdir(), 'idv-nginx-'));
  const upstream = new URL(brokerUrl).host;
  writeFileSync(
    join(dir, 'nginx.conf'),
    `# Written by tests/e2e/origins.test.mjs around ${NGINX_RECIPE}.
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 256; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream idv_broker { server ${upstream}; }
  server {
    listen 127.0.0.1:${port};
    server_name localhost;
    include ${NGINX_RECIPE};
  }
}
`
  );
  const child = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = createWriteStream(join(ARTIFACTS, `${name}.nginx.log`));
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const exited = new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));
  let gone = false;
  exited.then(() => {
    gone = true;
  });
  const base = `http://127.0.0.1:${port}`;
  // Ready once it answers through to the broker.
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    if (gone) throw new Error(`nginx exited at start; see ${name}.nginx.log and ${dir}/error.log`);
    const ok = await fetch(`${base}/idv/healthz`).then((r) => r.status === 200, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error('nginx did not answer within the timeout');
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    base,
    async stop() {
      if (!gone) {
        child.kill('SIGQUIT');
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
      try {
        log.write(readFileSync(join(dir, 'error.log')));
      } catch {
        /* no log */
      }
      log.end();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('the broker under /idv/ behind nginx (docs/examples/nginx-idv.conf)', () => {
  test('the demo and the hosted page work end to end under the prefix, live over the proxied WebSocket', async () => {
    const port = await freePort();
    const publicUrl = `http://127.0.0.1:${port}/idv`;
    const broker = await startBroker('nginx', {
      args: ['--demo', '--public-url', publicUrl, '--trusted-proxy', '127.0.0.1'],
    });
    let proxy;
    const contexts = [];
    try {
      proxy = await startNginx('nginx', port, broker.baseUrl);
      const desktopCtx = await browser.newContext(DESKTOP);
      contexts.push(desktopCtx);
      const desktop = await desktopCtx.newPage();
      const desktopWatch = await watch(desktop, 'desktop /idv/demo');
      await desktop.goto(`${publicUrl}/demo`);
      await desktop.getByTestId('start').click();
      await desktop.waitForFunction(
        () => {
          const img = document.querySelector('[data-testid="qr"]');
          return img && img.complete && img.naturalWidth > 0;
        },
        null,
        { timeout: TIMEOUT }
      );
      await waitForText(desktop, 'status', 'initialized');
      await waitForText(desktop, 'transport', 'websocket');
      const url = await desktop.getByTestId('verify-link').getAttribute('href');
      assert.match(url, new RegExp(`^${publicUrl.replace(/[.]/g, '\\.')}/verify/[0-9a-f-]{36}$`), url);
      await shot(desktop, 'nginx-1-desktop-qr');

      const phoneCtx = await browser.newContext(PHONE);
      contexts.push(phoneCtx);
      const phonePage = await phoneCtx.newPage();
      const phoneWatch = await watch(phonePage, 'phone /idv/verify');
      // Demo mode: the hosted page asks /idv/demo/api/device-token for its token.
      await phonePage.goto(url);
      await phonePage.getByTestId('scopes').waitFor({ state: 'visible', timeout: TIMEOUT });
      await waitForText(desktop, 'status', 'retrieved');
      await phonePage.getByLabel('Date of birth').fill('1815-12-10');
      await phonePage
        .getByTestId('file-selfie')
        .setInputFiles({ name: 'selfie.jpg', mimeType: 'image/jpeg', buffer: await makeJpeg(phonePage) });
      await phonePage.getByTestId('upload-selfie').filter({ hasText: /^Uploaded/ }).waitFor({ timeout: TIMEOUT });
      // The demo's sessions have a binding: the number the desktop shows, typed on the phone.
      const code = (await desktop.getByTestId('binding-code').textContent()).trim();
      await phonePage.getByTestId('binding-input').fill(code);
      await phonePage.getByTestId('approve').click();
      await waitForText(phonePage, 'status', 'confirmed');
      await shot(phonePage, 'nginx-2-phone-confirmed');

      await waitForText(desktop, 'status', 'confirmed');
      await desktop.getByTestId('decision').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.equal(await desktop.getByTestId('shared-full_name').textContent(), 'Ada Lovelace');
      assert.equal(await desktop.getByTestId('transport').textContent(), 'websocket');
      await shot(desktop, 'nginx-3-desktop-confirmed');
      desktopWatch.assertClean();
      phoneWatch.assertClean();
    } finally {
      for (const c of contexts) await c.close().catch(() => {});
      await proxy?.stop();
      await broker.stop();
    }
  });
});
