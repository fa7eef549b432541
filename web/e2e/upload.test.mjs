// End-to-end: the upload page in a real Chromium against a running gateway.
//
//   STRONGBOX_URL=http://localhost:8000 node --test web/e2e/
//
// The gateway must already be up (with auth and storage behind it), with the per-user quotas
// scripts/e2e.sh sets (USER_QUOTA_BYTES=1000000000 USER_MAX_FILES=1000), which the usage line
// shows. Without STRONGBOX_URL, or without Chromium (/usr/bin/chromium, or CHROMIUM=/path), the
// tests fail rather than skip: a skipped end-to-end test reads as green and proves nothing. With
// SCREENSHOT=path (scripts/e2e.sh --screenshot sets docs/screenshot-upload.png), the first test
// leaves a screenshot of the page there; a plain run writes nothing into the working tree.
import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { MiB, fileRow, openPage, randomFile, registerAndLogIn, useChromium } from "./support.mjs";

/** Where to leave a screenshot of the page, only when asked. */
const SCREENSHOT = process.env.SCREENSHOT;
/** The server's quota, as scripts/e2e.sh sets it and the page shows it (in en-US). */
const QUOTA_BYTES = 1_000_000_000;
const QUOTA = "1 GB";
const MAX_FILES = "1,000";

const chromium = useChromium("upload");

test("register, log in, upload 20 MiB and a small file, download them intact, delete them", { timeout: 180_000 }, async (t) => {
  const page = await openPage(chromium.browser, t, { viewport: { width: 900, height: 800 } });
  await registerAndLogIn(page);
  const large = await randomFile(chromium.scratch, `e2e-${randomUUID()}.bin`, 20 * MiB);
  // Up to 1 MiB a file goes in one PutFile call; a larger one through a session.
  const small = await randomFile(chromium.scratch, `e2e-small-${randomUUID()}.bin`, 300 * 1024);
  const calls = [];
  page.on("request", (request) => {
    const method = new URL(request.url()).pathname.match(/^\/storage\.v1\.StorageService\/(\w+)$/);
    if (method) {
      calls.push(method[1]);
    }
  });

  await page.setInputFiles("#file-input", [large.path, small.path]);
  for (const file of [large, small]) {
    const upload = uploadRow(page, file.name);
    await upload.locator('[data-testid="progress-percent"]', { hasText: "100%" }).waitFor();
    await page.locator('[data-testid="upload-row"][data-state="done"]', { hasText: file.name }).waitFor();
    await fileRow(page, file.name).waitFor();
  }
  assert.equal(calls.filter((call) => call === "PutFile").length, 1, calls.join(" "));
  assert.equal(calls.filter((call) => call === "CreateUpload").length, 1, calls.join(" "));
  // 20 MiB + 300 KiB = 21,278,720 bytes; the page counts in decimal units, as browsers do.
  const meter = await usageReads(page, `2 of ${MAX_FILES} files · 21.3 MB of ${QUOTA}`);
  assert.deepEqual(meter, {
    hidden: false,
    value: 20 * MiB + 300 * 1024,
    max: QUOTA_BYTES,
    text: `2% used: 21.3 MB of ${QUOTA}`,
  });
  if (SCREENSHOT) {
    await mkdir(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
  }

  const usageAfterDeleting = [
    `1 of ${MAX_FILES} files · 307.2 kB of ${QUOTA}`,
    `0 of ${MAX_FILES} files · 0 bytes of ${QUOTA}`,
  ];
  for (const [index, file] of [large, small].entries()) {
    const listed = fileRow(page, file.name);
    assert.equal(await downloadedSha256(listed), file.sha256, file.name);
    page.once("dialog", (dialog) => dialog.accept());
    await listed.locator('[data-testid="delete"]').click();
    await listed.waitFor({ state: "detached" });
    await usageReads(page, usageAfterDeleting[index]);
  }
});

test("an upload interrupted by a reload resumes where it stopped", { timeout: 300_000 }, async (t) => {
  const page = await openPage(chromium.browser, t, { viewport: { width: 900, height: 800 } });
  await registerAndLogIn(page);
  const file = await randomFile(chromium.scratch, `e2e-${randomUUID()}.bin`, 48 * MiB);

  // Slow the upload down, so the reload reliably lands in the middle of it.
  const devtools = await page.context().newCDPSession(page);
  await devtools.send("Network.enable");
  await setUploadBandwidth(devtools, 4 * MiB);
  await page.setInputFiles("#file-input", file.path);
  await page.waitForFunction(
    (name) => {
      const row = [...document.querySelectorAll('[data-testid="upload-row"]')].find((r) =>
        r.textContent.includes(name),
      );
      const percent = parseInt(row?.querySelector('[data-testid="progress-percent"]')?.textContent ?? "", 10);
      return percent >= 20 && percent < 100;
    },
    file.name,
    { polling: 50 },
  );
  await page.reload();
  await setUploadBandwidth(devtools, -1);

  const interrupted = page.locator('#interrupted [data-testid="interrupted-row"]', { hasText: file.name });
  await interrupted.waitFor();
  const stoppedAt = parseInt(await interrupted.locator('[data-testid="interrupted-percent"]').textContent(), 10);
  assert.ok(stoppedAt > 0 && stoppedAt < 100, `the interrupted upload shows ${stoppedAt}%`);

  await recordProgressShown(page);
  await page.setInputFiles("#file-input", file.path);
  await page.locator('[data-testid="upload-row"][data-state="done"]', { hasText: file.name }).waitFor();
  const shown = await page.evaluate(() => window.progressShown);
  assert.ok(shown.length > 0, "the resumed upload showed no progress");
  assert.ok(shown[0] >= stoppedAt, `the resumed upload started at ${shown[0]}%, not at ${stoppedAt}%`);
  assert.equal(shown.at(-1), 100);
  assert.equal(await interrupted.count(), 0, "the resumed upload is still listed as interrupted");

  const listed = fileRow(page, file.name);
  await listed.waitFor();
  assert.equal(await downloadedSha256(listed), file.sha256);
  // The session's reservation became the file: 48 MiB stored, nothing counted twice.
  const meter = await usageReads(page, `1 of ${MAX_FILES} files · 50.3 MB of ${QUOTA}`);
  assert.equal(meter.value, 48 * MiB);
});

function uploadRow(page, name) {
  return page.locator('[data-testid="upload-row"]', { hasText: name });
}

/**
 * Waits until the usage line under "My files" is shown and reads exactly `text`, and returns
 * the state of its quota meter.
 */
async function usageReads(page, text) {
  const line = page.locator('[data-testid="usage"]');
  const shown = line.locator('[data-testid="usage-text"]');
  try {
    await page.waitForFunction(
      (expected) => {
        const usage = document.querySelector('[data-testid="usage"]');
        return !usage.hidden && usage.querySelector('[data-testid="usage-text"]').textContent === expected;
      },
      text,
      { timeout: 15_000 },
    );
  } catch {
    // Say what the page shows instead of only "timed out".
    assert.equal(await line.isVisible(), true, "the usage line is shown");
    assert.equal(await shown.textContent(), text, "the usage line");
  }
  return line.locator('[data-testid="usage-meter"]').evaluate((meter) => ({
    hidden: meter.hidden,
    value: meter.value,
    max: meter.max,
    text: meter.getAttribute("aria-valuetext"),
  }));
}

/** Fetches the file behind a row's Download link, as a browser without credentials would. */
async function downloadedSha256(row) {
  const url = await row.locator('[data-testid="download"]').evaluate((link) => link.href);
  const response = await fetch(url);
  assert.equal(response.status, 200, `GET ${url}`);
  const hash = createHash("sha256");
  for await (const chunk of response.body) {
    hash.update(chunk);
  }
  return hash.digest("hex");
}

/** Caps the page's upload speed in bytes per second (-1: no cap). */
async function setUploadBandwidth(devtools, bytesPerSecond) {
  await devtools.send("Network.emulateNetworkConditions", {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond,
  });
}

/** From now on, collects into window.progressShown every percentage an upload row shows. */
async function recordProgressShown(page) {
  await page.evaluate(() => {
    window.progressShown = [];
    new MutationObserver(() => {
      for (const cell of document.querySelectorAll('#uploads [data-testid="progress-percent"]')) {
        const percent = parseInt(cell.textContent, 10);
        if (!Number.isNaN(percent) && percent !== window.progressShown.at(-1)) {
          window.progressShown.push(percent);
        }
      }
    }).observe(document.querySelector("#uploads"), { subtree: true, childList: true, characterData: true });
  });
}
