// Regenerates docs/demo.png: the demo client app on a desktop with the hosted device
// page on a phone beside it, mid-journey. Not a test; run by hand after a visual change:
//   cargo build --bin idv-broker && node tests/e2e/screenshot.mjs
// (from any directory; needs `npm ci` in tests/e2e first).

import { statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { PHONE, TIMEOUT, launchBrowser, startBroker, waitForText } from './harness.mjs';

const out = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs', 'demo.png');
const broker = await startBroker('screenshot');
const browser = await launchBrowser();
try {
  const desktop = await (await browser.newContext({ viewport: { width: 1120, height: 700 } })).newPage();
  await desktop.goto(`${broker.baseUrl}/demo`);
  await desktop.getByTestId('start').click();
  await desktop.getByTestId('qr').waitFor({ timeout: TIMEOUT });
  const url = await desktop.getByTestId('verify-link').getAttribute('href');

  const phone = await (await browser.newContext({ ...PHONE, deviceScaleFactor: 1 })).newPage();
  await phone.goto(url);
  await phone.getByTestId('scopes').waitFor({ timeout: TIMEOUT });
  await phone.getByLabel('Date of birth').fill('1815-12-10');
  await waitForText(desktop, 'status', 'retrieved');
  await desktop.evaluate(() => document.activeElement && document.activeElement.blur());
  await phone.evaluate(() => document.activeElement && document.activeElement.blur());

  const desktopPng = await desktop.screenshot();
  const phonePng = await phone.screenshot();

  // Compose the two in a plain page (no network: both images are data: URLs).
  const frame = await (await browser.newContext({ viewport: { width: 1120, height: 560 } })).newPage();
  await frame.setContent(`<!doctype html><html><head><style>
      body { margin: 0; background: #dfe5ee; font: 14px system-ui, sans-serif; }
      .row { display: flex; gap: 28px; align-items: flex-start; justify-content: center; padding: 24px; }
      .browser { width: 760px; border-radius: 10px; overflow: hidden; background: #fff; box-shadow: 0 8px 28px rgba(0,0,0,.18); }
      .bar { height: 28px; background: #eceff3; display: flex; align-items: center; gap: 6px; padding: 0 10px; }
      .bar i { width: 10px; height: 10px; border-radius: 50%; background: #c5ccd6; display: block; }
      .bar span { margin-left: 12px; color: #4a5568; font-size: 12px; }
      .phone { width: 250px; border: 10px solid #1b2430; border-radius: 28px; overflow: hidden; background: #fff; box-shadow: 0 8px 28px rgba(0,0,0,.25); }
      img { display: block; width: 100%; }
    </style></head><body><div class="row">
      <div class="browser"><div class="bar"><i></i><i></i><i></i><span>/demo</span></div>
        <img src="data:image/png;base64,${desktopPng.toString('base64')}" alt=""></div>
      <div class="phone"><img src="data:image/png;base64,${phonePng.toString('base64')}" alt=""></div>
    </div></body></html>`);
  await frame.waitForFunction(() => [...document.images].every((i) => i.complete && i.naturalWidth > 0));
  const png = await frame.locator('.row').screenshot();
  writeFileSync(out, png);
  console.log(`wrote ${out} (${Math.round(statSync(out).size / 1024)} KB)`);
} finally {
  await browser.close();
  await broker.stop();
}
