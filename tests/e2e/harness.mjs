// Shared pieces of the browser end-to-end tests: a real broker per test (--demo, port 0,
// a fresh database), Debian's Chromium driven by playwright-core, page watchers that turn
// any JS error or CSP violation into a test failure, axe-core, and step screenshots.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, createWriteStream } from 'node:fs';
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const require = createRequire(import.meta.url);

export const ARTIFACTS = join(here, 'artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

/** Generous bound for any one awaited condition (CI machines are slow and shared). */
export const TIMEOUT = 20_000;

const BROKER_BIN = process.env.IDV_BROKER_BIN || join(root, 'target', 'debug', 'idv-broker');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/**
 * Starts `idv-broker` (by default with `--demo`) on a free port with a fresh database;
 * resolves once it printed `listening on http://…`. `stop()` sends SIGTERM and waits.
 */
export async function startBroker(name, { args = ['--demo'] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'idv-e2e-'));
  const child = spawn(BROKER_BIN, [...args, '--bind', '127.0.0.1:0', '--db', join(dir, 'db')], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  const log = createWriteStream(join(ARTIFACTS, `${name}.broker.log`));
  child.stderr.pipe(log);
  const exited = new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));

  const baseUrl = await new Promise((res, rej) => {
    let buf = '';
    const timer = setTimeout(() => rej(new Error(`broker did not print "listening on" within 30 s (see ${name}.broker.log)`)), 30_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      rej(new Error(`cannot start ${BROKER_BIN}: ${e.message} (run: cargo build --bin idv-broker)`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      rej(new Error(`broker exited before listening (code ${code}, signal ${signal}); see ${name}.broker.log`));
    });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      buf += chunk;
      const m = buf.match(/^listening on (http:\/\/\S+)$/m);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
  });

  return {
    baseUrl,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
      log.end();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium; never a downloaded browser. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
}

export const DESKTOP = { viewport: { width: 1280, height: 800 } };
export const PHONE = {
  viewport: { width: 390, height: 844 },
  deviceScaleFactor: 2,
  isMobile: true,
  hasTouch: true,
  userAgent:
    'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0 Mobile Safari/537.36',
};

// Runs in every page before its own scripts: CSP violations reach the console as errors
// (Chromium also logs them itself; this makes the report carry the directive and URL).
const CSP_REPORTER = `
  document.addEventListener('securitypolicyviolation', function (e) {
    console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +
      ' at ' + e.sourceFile + ':' + e.lineNumber);
  });
`;

/**
 * Watches a page: every uncaught exception, console error and CSP violation is recorded;
 * `assertClean()` fails the test if any happened. `allow` lists patterns of console lines
 * a test provokes on purpose (Chromium logs every HTTP error status as a console error).
 */
export async function watch(page, label, { allow = [] } = {}) {
  const problems = [];
  await page.addInitScript({ content: CSP_REPORTER });
  page.on('pageerror', (err) => problems.push(`${label}: uncaught ${err.name}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const loc = msg.location();
      const line = `${label}: console error: ${msg.text()}${loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`;
      // Only an HTTP error that the test itself provokes may be let through, named exactly.
      if (!allow.some((re) => re.test(line))) problems.push(line);
    }
  });
  page.on('crash', () => problems.push(`${label}: the page crashed`));
  return {
    problems,
    assertClean() {
      if (problems.length) {
        throw new Error(`JavaScript errors or CSP violations:\n  ${problems.join('\n  ')}`);
      }
    },
  };
}

const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/**
 * Runs axe-core in the page and throws on any serious or critical violation. The page's
 * CSP forbids inline scripts, so the source goes in through the DevTools protocol
 * (page.evaluate), which the CSP does not govern, rather than a <script> tag.
 */
export async function assertAccessible(page, label) {
  await page.evaluate(AXE_SOURCE);
  const results = await page.evaluate(() =>
    window.axe.run(document, { resultTypes: ['violations'] })
  );
  const bad = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    const lines = bad.map(
      (v) => `${v.impact} ${v.id}: ${v.help} [${v.nodes.map((n) => n.target.join(' ')).join(', ')}]`
    );
    throw new Error(`axe found serious/critical problems on ${label}:\n  ${lines.join('\n  ')}`);
  }
  return results.violations;
}

/** Screenshot of a step, kept in tests/e2e/artifacts/ (not committed). */
export async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Waits until the element with `testId` shows exactly `text`. */
export async function waitForText(page, testId, text, timeout = TIMEOUT) {
  const exact = new RegExp(`^\\s*${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*$`);
  await page.getByTestId(testId).filter({ hasText: exact }).waitFor({ timeout });
}

/** A small real JPEG, drawn and encoded by the browser itself (a face-ish emoji on colour). */
export async function makeJpeg(page) {
  const dataUrl = await page.evaluate(() => {
    const c = document.createElement('canvas');
    c.width = 64;
    c.height = 64;
    const g = c.getContext('2d');
    g.fillStyle = '#2a7ab0';
    g.fillRect(0, 0, 64, 64);
    g.fillStyle = '#f2c98a';
    g.beginPath();
    g.arc(32, 30, 18, 0, Math.PI * 2);
    g.fill();
    return c.toDataURL('image/jpeg', 0.8);
  });
  const buffer = Buffer.from(dataUrl.split(',')[1], 'base64');
  if (buffer[0] !== 0xff || buffer[1] !== 0xd8) throw new Error('canvas did not produce a JPEG');
  return buffer;
}

/** An HS256 device JWT, as a phone app's own backend would mint it for the broker. */
export function deviceJwt(issuer, secret, sub, ttlSeconds = 600) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ iss: issuer, sub, iat: now, exp: now + ttlSeconds })}`;
  const sig = createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${sig}`;
}
