// What the end-to-end suites share: Chromium, a scratch directory, a fresh signed-in page,
// and random files to upload. Not a test file itself (node --test runs *.test.mjs).
import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

export const BASE_URL = process.env.STRONGBOX_URL;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const MiB = 1024 * 1024;

/**
 * Launches Chromium before the file's tests and closes it after; returns accessors for the
 * browser and a scratch directory removed at the end. Without STRONGBOX_URL or Chromium the
 * tests fail rather than skip: a skipped end-to-end test reads as green and proves nothing.
 */
export function useChromium(name) {
  const state = { browser: undefined, scratch: undefined };
  before(async () => {
    assert.ok(BASE_URL, "set STRONGBOX_URL to the gateway's address, e.g. http://localhost:8000");
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM`);
    state.browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
    state.scratch = await mkdtemp(join(tmpdir(), `strongbox-e2e-${name}-`));
  });
  after(async () => {
    await state.browser?.close();
    if (state.scratch) {
      await rm(state.scratch, { recursive: true, force: true });
    }
  });
  return state;
}

/**
 * A fresh page (its own cookies and storage) that closes when the test ends. en-US: numbers
 * on the page are asserted as they read in that locale.
 */
export async function openPage(browser, t, options = {}) {
  const context = await browser.newContext({ baseURL: BASE_URL, locale: "en-US", ...options });
  t.after(() => context.close());
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  return page;
}

export async function registerAndLogIn(page) {
  const email = `e2e-${randomUUID()}@example.com`;
  await page.goto("/");
  await page.fill("#email", email);
  await page.fill("#password", randomBytes(12).toString("base64url"));
  await page.click("#register");
  await page.locator("#status", { hasText: "Account created" }).waitFor();
  await page.click("#login");
  await page.locator("#user-email", { hasText: email }).waitFor();
}

/** The row of "My files" that lists `name`. */
export function fileRow(page, name) {
  return page.locator('[data-testid="file-row"]', {
    has: page.locator('[data-testid="file-name"]', { hasText: name }),
  });
}

/** Writes `size` random bytes to a file in `dir`, a MiB at a time, hashing as it goes. */
export async function randomFile(dir, name, size) {
  const path = join(dir, name);
  const hash = createHash("sha256");
  const handle = await open(path, "w");
  try {
    for (let written = 0; written < size; written += MiB) {
      const block = randomBytes(Math.min(MiB, size - written));
      hash.update(block);
      await handle.write(block);
    }
  } finally {
    await handle.close();
  }
  return { name, path, sha256: hash.digest("hex") };
}
