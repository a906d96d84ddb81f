// The person's journey in real Chromium: the demo client app on a desktop, the hosted
// device page on a phone-sized context, the SDK between them (SPEC §3, issue 8).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  DESKTOP,
  PHONE,
  TIMEOUT,
  assertAccessible,
  deviceJwt,
  launchBrowser,
  makeJpeg,
  shot,
  startBroker,
  waitForText,
  watch,
} from './harness.mjs';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/**
 * One journey's world: its own broker, a desktop page and (on demand) a phone page,
 * each watched for errors. `close()` checks both pages stayed clean.
 */
async function world(name, { desktopSetup, desktopAllow, desktopOptions } = {}) {
  const broker = await startBroker(name);
  const contexts = [];
  const watchers = [];
  let navigations = 0;

  const desktopContext = await browser.newContext({ ...DESKTOP, ...desktopOptions });
  contexts.push(desktopContext);
  if (desktopSetup) await desktopSetup(desktopContext);
  const desktop = await desktopContext.newPage();
  watchers.push(await watch(desktop, 'desktop /demo', { allow: desktopAllow }));
  desktop.on('framenavigated', (frame) => {
    if (frame === desktop.mainFrame()) navigations += 1;
  });

  return {
    broker,
    desktop,
    /** How often the desktop's main frame navigated (1 = only the first load). */
    navigations: () => navigations,
    async phone(options) {
      const ctx = await browser.newContext(PHONE);
      contexts.push(ctx);
      const page = await ctx.newPage();
      watchers.push(await watch(page, 'phone /verify', options));
      return page;
    },
    async close() {
      try {
        for (const w of watchers) w.assertClean();
      } finally {
        for (const c of contexts) await c.close().catch(() => {});
        await broker.stop();
      }
    },
  };
}

/** Desktop: open /demo, press Start, wait for the QR; returns the session url and id. */
async function startOnDesktop(w, name, query = '') {
  const { desktop, broker } = w;
  await desktop.goto(`${broker.baseUrl}/demo${query}`);
  await desktop.getByTestId('start').waitFor({ timeout: TIMEOUT });
  await assertAccessible(desktop, '/demo before start');
  await shot(desktop, `${name}-1-desktop-ready`);

  await desktop.getByTestId('start').click();
  const qr = desktop.getByTestId('qr');
  await qr.waitFor({ state: 'visible', timeout: TIMEOUT });
  // The QR is a real, decoded image (the SVG from qr.svg, shown through a blob: URL).
  await desktop.waitForFunction(
    () => {
      const img = document.querySelector('[data-testid="qr"]');
      return img && img.complete && img.naturalWidth > 0;
    },
    null,
    { timeout: TIMEOUT }
  );
  const src = await qr.getAttribute('src');
  assert.match(src, /^blob:/, 'the QR is shown through a blob: URL, not a URL carrying the token');
  await waitForText(desktop, 'status', 'initialized');

  const url = await desktop.getByTestId('verify-link').getAttribute('href');
  assert.match(url, /\/verify\/[0-9a-f-]{36}$/, `verify-link is the session url: ${url}`);
  assert.equal(await desktop.getByTestId('verify-link').getAttribute('target'), '_blank');
  const sessionId = url.split('/').pop();
  assert.equal(await qr.getAttribute('data-session-id'), sessionId);
  await assertAccessible(desktop, '/demo with the QR');
  await shot(desktop, `${name}-2-desktop-qr`);
  return { url, sessionId };
}

/** Phone: open the session url, check the request is shown in words. */
async function openOnPhone(w, name, url, watchOptions) {
  const phone = await w.phone(watchOptions);
  await phone.goto(url);
  const scopes = phone.getByTestId('scopes');
  await scopes.waitFor({ state: 'visible', timeout: TIMEOUT });
  const items = await scopes.locator('li').allTextContents();
  assert.deepEqual(items, [
    'Your full name',
    'Your date of birth',
    'A selfie: a photo of your face',
  ]);
  assert.notEqual(await phone.getByTestId('requester').textContent(), '');
  // The registration prefills the name field.
  assert.equal(await phone.getByLabel('Full name').inputValue(), 'Ada Lovelace');
  await assertAccessible(phone, '/verify with the request');
  await shot(phone, `${name}-3-phone-request`);
  return phone;
}

/**
 * The demo's sessions have a binding (SPEC §2): once the phone opened the session, the
 * desktop shows a two-digit number, which the person types on the phone. Returns it.
 */
async function typeNumberFromDesktop(w, phone) {
  const shown = w.desktop.getByTestId('binding-code');
  await shown.waitFor({ state: 'visible', timeout: TIMEOUT });
  const code = (await shown.textContent()).trim();
  assert.match(code, /^[1-9][0-9]$/, `the desktop shows two digits: ${code}`);
  await phone.getByTestId('binding-input').fill(code);
  return code;
}

/** A two-digit number that is not `code`. */
function another(code) {
  return code === '42' ? '43' : '42';
}

/** Fills what the demo asks (the name is prefilled) and uploads the selfie. */
async function fillRequest(phone) {
  await phone.getByLabel('Date of birth').fill('1815-12-10');
  await phone
    .getByTestId('file-selfie')
    .setInputFiles({ name: 'selfie.jpg', mimeType: 'image/jpeg', buffer: await makeJpeg(phone) });
  await phone.getByTestId('upload-selfie').filter({ hasText: /^Uploaded/ }).waitFor({ timeout: TIMEOUT });
}

/** The desktop of these journeys is Chrome on Linux, as the phone is told. */
const CHROME_ON_LINUX = {
  userAgent:
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36',
};

describe('the QR journey in real Chromium', () => {
  test('a person approves on the phone and the desktop shows confirmed and the decision without a reload', async () => {
    const w = await world('approve');
    try {
      const { url } = await startOnDesktop(w, 'approve');
      // The desktop follows the phone live over its WebSocket.
      await waitForText(w.desktop, 'transport', 'websocket');

      const phone = await openOnPhone(w, 'approve', url);
      // Opening the request moves the session on: the desktop sees it without a reload.
      await waitForText(w.desktop, 'status', 'retrieved');

      await phone.getByLabel('Full name').fill('Ada King Lovelace');
      await phone.getByLabel('Date of birth').fill('1815-12-10');
      const selfie = phone.getByTestId('file-selfie');
      assert.equal(await selfie.getAttribute('capture'), 'user');
      assert.equal(await selfie.getAttribute('accept'), 'image/jpeg,image/png');
      await selfie.setInputFiles({ name: 'selfie.jpg', mimeType: 'image/jpeg', buffer: await makeJpeg(phone) });
      await phone.getByTestId('upload-selfie').filter({ hasText: /^Uploaded/ }).waitFor({ timeout: TIMEOUT });
      await phone.waitForFunction(() => {
        const img = document.querySelector('.preview');
        return img && !img.hidden && img.complete && img.naturalWidth > 0;
      });
      await assertAccessible(phone, '/verify filled in');
      await shot(phone, 'approve-4-phone-filled');

      await typeNumberFromDesktop(w, phone);
      await phone.getByTestId('approve').click();
      await waitForText(phone, 'status', 'confirmed');
      await shot(phone, 'approve-5-phone-done');

      await waitForText(w.desktop, 'status', 'confirmed');
      await w.desktop.getByTestId('decision').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.equal(await w.desktop.getByTestId('shared-full_name').textContent(), 'Ada King Lovelace');
      assert.equal(await w.desktop.getByTestId('shared-date_of_birth').textContent(), '1815-12-10');
      const file = await w.desktop.getByTestId('file-selfie').textContent();
      assert.match(file, /^selfie: image\/jpeg, \d+ bytes$/);
      assert.equal(w.navigations(), 1, 'the desktop page never reloaded');
      await assertAccessible(w.desktop, '/demo with the decision');
      await assertAccessible(phone, '/verify finished');
      await shot(w.desktop, 'approve-6-desktop-confirmed');
    } finally {
      await w.close();
    }
  });

  test('number matching: a wrong number is explained with the tries left, the right one confirms, the desktop follows live', async () => {
    const w = await world('binding', {
      desktopOptions: CHROME_ON_LINUX,
    });
    try {
      const { url } = await startOnDesktop(w, 'binding');
      // No number before the phone opened the session.
      assert.equal(await w.desktop.getByTestId('binding-code').count(), 0);
      // The wrong number is answered 422, which Chromium logs as a console error.
      const phone = await openOnPhone(w, 'binding', url, { allow: [/status of 422 .*\/update/] });
      await waitForText(w.desktop, 'status', 'retrieved');

      // The phone asks for the number and says where the session is shown.
      const input = phone.getByTestId('binding-input');
      assert.equal(await input.getAttribute('inputmode'), 'numeric');
      assert.equal(await input.getAttribute('autocomplete'), 'one-time-code');
      assert.equal(
        await phone.getByLabel('Type the number shown on the screen where you started').getAttribute('data-testid'),
        'binding-input'
      );
      assert.match(await phone.getByTestId('shown-on').textContent(), /^Started on Chrome on Linux, (just now|\d+ minutes? ago)\.$/);

      // The desktop shows the number large, and only it.
      const code = (await w.desktop.getByTestId('binding-code').textContent()).trim();
      assert.match(code, /^[1-9][0-9]$/);
      await assertAccessible(w.desktop, '/demo showing the number');
      await shot(w.desktop, 'binding-3-desktop-number');

      await fillRequest(phone);
      await input.fill(another(code));
      await phone.getByTestId('approve').click();
      const error = phone.locator('#binding-input-error');
      await error.filter({ hasText: /not the number shown.*2 more tries/ }).waitFor({ timeout: TIMEOUT });
      assert.equal(await input.getAttribute('aria-invalid'), 'true');
      assert.equal(await input.inputValue(), '', 'the wrong number is cleared for the next try');
      await waitForText(w.desktop, 'status', 'retrieved');
      await assertAccessible(phone, '/verify after a wrong number');
      await shot(phone, 'binding-4-phone-wrong-number');

      await input.fill(code);
      await phone.getByTestId('approve').click();
      await waitForText(phone, 'status', 'confirmed');
      await waitForText(w.desktop, 'status', 'confirmed');
      await w.desktop.getByTestId('decision').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.equal(await w.desktop.getByTestId('binding-code').count(), 0, 'the number goes with the session');
      assert.equal(w.navigations(), 1, 'the desktop page never reloaded');
      await assertAccessible(w.desktop, '/demo confirmed after number matching');
      await shot(w.desktop, 'binding-5-desktop-confirmed');
    } finally {
      await w.close();
    }
  });

  test('number matching by keyboard alone: three wrong numbers end the session for safety on both screens', async () => {
    const w = await world('binding-keys', { desktopOptions: CHROME_ON_LINUX });
    try {
      const { url } = await startOnDesktop(w, 'binding-keys');
      const phone = await openOnPhone(w, 'binding-keys', url, { allow: [/status of 422 .*\/update/] });
      await waitForText(w.desktop, 'status', 'retrieved');
      const code = (await w.desktop.getByTestId('binding-code').textContent()).trim();
      await fillRequest(phone);

      // From the top of the page, Tab reaches the number field; Enter sends the form.
      await phone.getByTestId('requester').click();
      let reached = false;
      for (let i = 0; i < 20 && !reached; i += 1) {
        await phone.keyboard.press('Tab');
        reached = await phone.evaluate(() => document.activeElement?.getAttribute('data-testid') === 'binding-input');
      }
      assert.ok(reached, 'the number field is reachable with Tab');
      for (const left of ['2 more tries', 'one more try']) {
        await phone.keyboard.type(another(code));
        await phone.keyboard.press('Enter');
        await phone.locator('#binding-input-error').filter({ hasText: left }).waitFor({ timeout: TIMEOUT });
        // The focus is back in the field, for the next try.
        assert.equal(await phone.evaluate(() => document.activeElement?.id), 'binding-input');
      }
      await phone.keyboard.type(another(code));
      await phone.keyboard.press('Enter');
      await waitForText(phone, 'status', 'declined');
      assert.equal(await phone.evaluate(() => document.activeElement?.id), 'result-title');
      assert.match(await phone.locator('#result-text').textContent(), /ended for safety/);
      await assertAccessible(phone, '/verify ended for safety');
      await shot(phone, 'binding-keys-4-phone-ended');

      await waitForText(w.desktop, 'status', 'declined');
      await w.desktop
        .getByTestId('outcome-text')
        .filter({ hasText: /ended for safety/ })
        .waitFor({ timeout: TIMEOUT });
      assert.equal(await w.desktop.getByTestId('binding-code').count(), 0);
      await assertAccessible(w.desktop, '/demo ended for safety');
      await shot(w.desktop, 'binding-keys-5-desktop-ended');
    } finally {
      await w.close();
    }
  });

  test('a person denies with the keyboard and the desktop shows declined and no decision data', async () => {
    const w = await world('deny');
    try {
      const { url } = await startOnDesktop(w, 'deny');
      const phone = await openOnPhone(w, 'deny', url);
      await waitForText(w.desktop, 'status', 'retrieved');

      // Keyboard only: Tab through the page in order until Deny has the focus, then Enter.
      let reached = false;
      for (let i = 0; i < 20 && !reached; i += 1) {
        await phone.keyboard.press('Tab');
        reached = await phone.evaluate(() => document.activeElement?.getAttribute('data-testid') === 'deny');
      }
      assert.ok(reached, 'Deny is reachable with Tab');
      await phone.keyboard.press('Enter');
      await waitForText(phone, 'status', 'declined');
      // The outcome heading takes the focus, so a screen reader announces it.
      assert.equal(await phone.evaluate(() => document.activeElement?.id), 'result-title');
      await assertAccessible(phone, '/verify declined');
      await shot(phone, 'deny-4-phone-declined');

      await waitForText(w.desktop, 'status', 'declined');
      await w.desktop.getByTestId('outcome').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.match(await w.desktop.getByTestId('outcome-text').textContent(), /declined/);
      assert.equal(await w.desktop.getByTestId('decision').isVisible(), false);
      assert.equal(w.navigations(), 1, 'the desktop page never reloaded');
      await assertAccessible(w.desktop, '/demo declined');
      await shot(w.desktop, 'deny-5-desktop-declined');
    } finally {
      await w.close();
    }
  });

  test('a session that expires before the phone decides is replaced by a new QR without a reload', async () => {
    const w = await world('expiry');
    try {
      const first = await startOnDesktop(w, 'expiry', '?ttl=30');
      // The broker expires it within a second of expires_at; the SDK then asks the demo
      // backend for a new session and swaps the QR.
      const expiryBound = 30_000 + 2 * TIMEOUT;
      await w.desktop.waitForFunction(
        (old) => {
          const img = document.querySelector('[data-testid="qr"]');
          return img && img.dataset.sessionId !== old && img.complete && img.naturalWidth > 0;
        },
        first.sessionId,
        { timeout: expiryBound, polling: 250 }
      );
      const url = await w.desktop.getByTestId('verify-link').getAttribute('href');
      const second = url.split('/').pop();
      assert.notEqual(second, first.sessionId, 'a new session');
      assert.equal(await w.desktop.getByTestId('qr').getAttribute('data-session-id'), second);
      await waitForText(w.desktop, 'status', 'initialized');
      await w.desktop.getByTestId('refresh-note').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.equal(await w.desktop.getByTestId('outcome').isVisible(), false, 'an expiry that was refreshed is no outcome');
      assert.equal(w.navigations(), 1, 'the desktop page never reloaded');

      // The old session is really over: its page says so (its `information` is 409), and
      // the new one works.
      const closed = new RegExp(`status of 409 .*/v1/sessions/${first.sessionId}/information`);
      const phone = await w.phone({ allow: [closed] });
      await phone.goto(first.url);
      await phone.getByTestId('problem').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.match(await phone.getByTestId('problem').textContent(), /no longer open/);
      await assertAccessible(phone, '/verify of an expired session');
      await shot(phone, 'expiry-3-phone-old-session');
      await phone.goto(url);
      await phone.getByTestId('scopes').waitFor({ state: 'visible', timeout: TIMEOUT });
      await waitForText(w.desktop, 'status', 'retrieved');
      await assertAccessible(w.desktop, '/demo after a refresh');
      await shot(w.desktop, 'expiry-4-desktop-new-qr');
    } finally {
      await w.close();
    }
  });

  test('when handleVerify fails after an approval the page is told through onError', async () => {
    const w = await world('verify-failed', {
      // The app backend cannot read the decision (say, it is down).
      desktopSetup: (ctx) =>
        ctx.route(/\/demo\/api\/sessions\/[^/]+\/decision$/, (route) =>
          route.fulfill({
            status: 503,
            contentType: 'application/json',
            body: JSON.stringify({ error: { code: 'unavailable', message: 'the app backend is down' } }),
          })
        ),
      desktopAllow: [/status of 503 .*\/demo\/api\/sessions\/[^/]+\/decision/],
    });
    try {
      const { url } = await startOnDesktop(w, 'verify-failed');
      const phone = await openOnPhone(w, 'verify-failed', url);
      await phone.getByLabel('Date of birth').fill('1815-12-10');
      await phone
        .getByTestId('file-selfie')
        .setInputFiles({ name: 'selfie.jpg', mimeType: 'image/jpeg', buffer: await makeJpeg(phone) });
      await phone.getByTestId('upload-selfie').filter({ hasText: /^Uploaded/ }).waitFor({ timeout: TIMEOUT });
      await typeNumberFromDesktop(w, phone);
      await phone.getByTestId('approve').click();

      await waitForText(w.desktop, 'status', 'confirmed');
      await w.desktop
        .getByTestId('outcome-text')
        .filter({ hasText: 'Approved on the phone, but could not read the decision: the app backend is down.' })
        .waitFor({ timeout: TIMEOUT });
      assert.equal(await w.desktop.getByTestId('decision').isVisible(), false);
      await assertAccessible(w.desktop, '/demo after a handleVerify failure');
      await shot(w.desktop, 'verify-failed-5-desktop');
    } finally {
      await w.close();
    }
  });

  test('a WebSocket dropped mid-session is resumed with after_seq and no transition is missed', async () => {
    const urls = [];
    const w = await world('resume', {
      desktopSetup: (ctx) =>
        ctx.routeWebSocket(/\/v1\/sessions\/[^/]+\/ws/, (ws) => {
          urls.push(new URL(ws.url()));
          const server = ws.connectToServer();
          if (urls.length > 1) return; // later connections pass through untouched
          // The first connection loses the `retrieved` frame in flight: the page side is
          // dropped instead, as by a network change, before that frame arrives.
          server.onMessage((frame) => {
            if (JSON.parse(frame).type === 'snapshot') {
              ws.send(frame);
              return;
            }
            ws.close({ code: 4000, reason: 'dropped by the test' });
            server.close();
          });
        }),
    });
    try {
      const { url } = await startOnDesktop(w, 'resume');
      const phone = await openOnPhone(w, 'resume', url);
      // Only the resumed subscription can deliver it: its replay from after_seq.
      await waitForText(w.desktop, 'status', 'retrieved');
      assert.ok(urls.length >= 2, 'the SDK reconnected');
      assert.equal(urls[0].searchParams.get('after_seq'), '1');
      assert.equal(urls[1].searchParams.get('after_seq'), '1', 'it resumes after the last seq it saw');

      await phone.getByLabel('Date of birth').fill('1815-12-10');
      await phone
        .getByTestId('file-selfie')
        .setInputFiles({ name: 'selfie.jpg', mimeType: 'image/jpeg', buffer: await makeJpeg(phone) });
      await phone.getByTestId('upload-selfie').filter({ hasText: /^Uploaded/ }).waitFor({ timeout: TIMEOUT });
      await typeNumberFromDesktop(w, phone);
      await phone.getByTestId('approve').click();
      await waitForText(w.desktop, 'status', 'confirmed');
      await w.desktop.getByTestId('decision').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.equal(await w.desktop.getByTestId('transport').textContent(), 'websocket');
      assert.equal(w.navigations(), 1, 'the desktop page never reloaded');
      await shot(w.desktop, 'resume-5-desktop-confirmed');
    } finally {
      await w.close();
    }
  });

  test('with WebSockets blocked in the page the desktop still reaches the outcome by long-poll', async () => {
    let attempts = 0;
    const w = await world('longpoll', {
      // Every WebSocket of the page is refused at once, as by a proxy that blocks upgrades.
      desktopSetup: (ctx) =>
        ctx.routeWebSocket(/\/v1\/sessions\/[^/]+\/ws/, (ws) => {
          attempts += 1;
          ws.close({ code: 1011, reason: 'blocked by the test' });
        }),
    });
    try {
      const { url } = await startOnDesktop(w, 'longpoll');
      await waitForText(w.desktop, 'transport', 'long-poll');
      assert.ok(attempts >= 1, 'the SDK tried a WebSocket first');

      const phone = await openOnPhone(w, 'longpoll', url);
      await waitForText(w.desktop, 'status', 'retrieved');
      await phone.getByLabel('Date of birth').fill('1815-12-10');
      await phone
        .getByTestId('file-selfie')
        .setInputFiles({ name: 'selfie.jpg', mimeType: 'image/jpeg', buffer: await makeJpeg(phone) });
      await phone.getByTestId('upload-selfie').filter({ hasText: /^Uploaded/ }).waitFor({ timeout: TIMEOUT });
      await typeNumberFromDesktop(w, phone);
      await phone.getByTestId('approve').click();
      await waitForText(phone, 'status', 'confirmed');

      await waitForText(w.desktop, 'status', 'confirmed');
      await w.desktop.getByTestId('decision').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.equal(await w.desktop.getByTestId('shared-full_name').textContent(), 'Ada Lovelace');
      assert.equal(await w.desktop.getByTestId('transport').textContent(), 'long-poll');
      assert.equal(w.navigations(), 1, 'the desktop page never reloaded');
      await assertAccessible(w.desktop, '/demo confirmed by long-poll');
      await shot(w.desktop, 'longpoll-5-desktop-confirmed');
    } finally {
      await w.close();
    }
  });

  test('without demo mode the device page takes its token from #token=, explains upload errors in words and follows redirect_url', async () => {
    const apiKey = 'e2e-api-key-0123456789';
    const secret = 'e2e-issuer-secret-0123456789';
    const broker = await startBroker('app', {
      args: ['--api-key', `Example Bank=${apiKey}`, '--issuer', `e2e-phone=${secret}`],
    });
    const contexts = [];
    const watchers = [];
    try {
      // The app backend opens the session with its key.
      const created = await fetch(`${broker.baseUrl}/v1/sessions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Api-Key': apiKey },
        body: JSON.stringify({
          scopes: ['full_name', 'selfie'],
          registration: { full_name: 'Grace Hopper' },
          redirect_url: 'https://app.example/idv/done',
        }),
      });
      assert.equal(created.status, 201);
      const session = await created.json();
      assert.equal((await fetch(`${broker.baseUrl}/demo`)).status, 404, 'no demo without --demo');

      // Without a token and without demo mode, the page says what it needs.
      const bare = await browser.newContext(PHONE);
      contexts.push(bare);
      const lost = await bare.newPage();
      // Not in demo mode: the page asks nobody for a token, so nothing is logged.
      watchers.push(await watch(lost, 'phone without token'));
      await lost.goto(session.url);
      await lost.getByTestId('problem').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.match(await lost.getByTestId('problem').textContent(), /#token=/);
      await assertAccessible(lost, '/verify without a token');
      await shot(lost, 'app-1-phone-no-token');

      // With the app's device token in the fragment.
      const ctx = await browser.newContext(PHONE);
      contexts.push(ctx);
      // The app's own page that redirect_url leads back to (served here, no network).
      await ctx.route('https://app.example/**', (route) =>
        route.fulfill({
          contentType: 'text/html',
          body: '<!doctype html><html lang="en"><title>App</title><link rel="icon" href="data:,"><h1>Back in the app</h1></html>',
        })
      );
      const phone = await ctx.newPage();
      watchers.push(
        await watch(phone, 'phone with #token=', {
          allow: [new RegExp(`status of 415 .*/v1/sessions/${session.session_id}/files/selfie`)],
        })
      );
      await phone.goto(`${session.url}#token=${deviceJwt('e2e-phone', secret, 'user-42')}`);
      await phone.getByTestId('scopes').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.equal(await phone.getByTestId('requester').textContent(), 'Example Bank');
      assert.equal(await phone.getByLabel('Full name').inputValue(), 'Grace Hopper');
      assert.equal(await phone.evaluate(() => location.hash), '', 'the token left the address bar');
      // A reload keeps the same device (the token is kept for this tab only).
      await phone.reload();
      await phone.getByTestId('scopes').waitFor({ state: 'visible', timeout: TIMEOUT });

      // Approve with the selfie missing: told in words, focus on the missing field.
      await phone.getByTestId('approve').click();
      await phone.getByRole('alert').filter({ hasText: 'One thing is missing' }).waitFor({ timeout: TIMEOUT });
      assert.equal(await phone.evaluate(() => document.activeElement?.getAttribute('data-testid')), 'file-selfie');
      await shot(phone, 'app-2-phone-missing');

      const selfie = phone.getByTestId('file-selfie');
      const state = phone.getByTestId('upload-selfie');
      // Bytes that are not an image: the broker answers 415, the page says it in words.
      await selfie.setInputFiles({ name: 'selfie.jpg', mimeType: 'image/jpeg', buffer: Buffer.from('not a photo at all') });
      await state.filter({ hasText: 'not a JPEG or PNG image' }).waitFor({ timeout: TIMEOUT });
      // Larger than the broker takes: refused before any byte is sent.
      const big = Buffer.alloc(5 * 1024 * 1024 + 1, 0);
      big.set([0xff, 0xd8, 0xff, 0xe0]);
      await selfie.setInputFiles({ name: 'huge.jpg', mimeType: 'image/jpeg', buffer: big });
      await state.filter({ hasText: 'the limit is 5 MB' }).waitFor({ timeout: TIMEOUT });
      await assertAccessible(phone, '/verify with upload errors');
      await shot(phone, 'app-3-phone-upload-errors');

      // Deny: the page follows the session's redirect_url with session_id and status added.
      await phone.getByTestId('deny').click();
      await phone.waitForURL(/^https:\/\/app\.example\/idv\/done\?/, { timeout: TIMEOUT });
      await phone.getByRole('heading', { name: 'Back in the app' }).waitFor({ timeout: TIMEOUT });
      const landed = new URL(phone.url());
      assert.equal(landed.searchParams.get('session_id'), session.session_id);
      assert.equal(landed.searchParams.get('status'), 'declined');

      for (const w of watchers) w.assertClean();
    } finally {
      for (const c of contexts) await c.close().catch(() => {});
      await broker.stop();
    }
  });

  test('in demo mode the device page gets a demo token for a demo session only, never for a real app\'s', async () => {
    const apiKey = 'e2e-api-key-0123456789';
    const broker = await startBroker('demo-lane', { args: ['--demo', '--api-key', `Example Bank=${apiKey}`] });
    const contexts = [];
    try {
      const created = await fetch(`${broker.baseUrl}/v1/sessions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Api-Key': apiKey },
        body: JSON.stringify({ scopes: ['full_name'], registration: { full_name: 'Grace Hopper' } }),
      });
      assert.equal(created.status, 201);
      const session = await created.json();

      // The demo refuses (404, the one console line it may cause) and the page says
      // what it needs; the real session was not touched.
      const ctx = await browser.newContext(PHONE);
      contexts.push(ctx);
      const phone = await ctx.newPage();
      const watcher = await watch(phone, 'phone on a real session', {
        allow: [/status of 404 .*\/demo\/api\/device-token/],
      });
      await phone.goto(session.url);
      await phone.getByTestId('problem').waitFor({ state: 'visible', timeout: TIMEOUT });
      assert.match(await phone.getByTestId('problem').textContent(), /Open this page from your app/);
      assert.equal(await phone.getByTestId('scopes').isVisible(), false, 'no registration shown');
      const seen = await fetch(`${broker.baseUrl}/v1/sessions/${session.session_id}`, {
        headers: { 'X-Api-Key': apiKey },
      });
      assert.equal((await seen.json()).status, 'initialized');
      watcher.assertClean();
    } finally {
      for (const c of contexts) await c.close().catch(() => {});
      await broker.stop();
    }
  });
});
