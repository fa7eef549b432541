// End-to-end over HTTPS: the page, its grpc-web calls and a download link, in a real Chromium
// that trusts the gateway's certificate only because its test CA is in Chromium's own trust
// store (an NSS database under $HOME; no certificate error is ignored).
//
//   HOME=<dir with .pki/nssdb trusting the CA> STRONGBOX_URL=https://localhost:8443 \
//     node --test web/e2e/https.test.mjs
//
// scripts/e2e.sh makes the CA, the certificate and the NSS database, and starts the gateway
// with GATEWAY_TLS_CERT and GATEWAY_TLS_KEY.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { BASE_URL, fileRow, openPage, randomFile, registerAndLogIn, useChromium } from "./support.mjs";

const chromium = useChromium("https");

test("the page works over HTTPS/h2: sign in, upload, download the file back", { timeout: 120_000 }, async (t) => {
  assert.ok(BASE_URL?.startsWith("https://"), `STRONGBOX_URL must be an https:// address: ${BASE_URL}`);
  const page = await openPage(chromium.browser, t);
  const grpcWeb = [];
  page.on("response", async (response) => {
    if (new URL(response.url()).pathname.startsWith("/auth.v1.")) {
      grpcWeb.push(response.url());
    }
  });
  page.on("console", (message) => console.log("console:", message.text()));
  page.on("requestfailed", (request) => console.log("failed:", request.url(), request.failure()?.errorText));
  await registerAndLogIn(page);
  assert.ok(grpcWeb.length >= 2, "Register and Login went over grpc-web");
  const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  assert.equal(protocol, "h2", "the page came over HTTP/2");
  assert.equal(await page.evaluate(() => window.isSecureContext), true);

  const file = await randomFile(chromium.scratch, `e2e-https-${randomUUID()}.bin`, 300 * 1024);
  await page.setInputFiles("#file-input", file.path);
  const row = fileRow(page, file.name);
  await row.waitFor();
  const link = await row.locator('[data-testid="download"]').evaluate((anchor) => anchor.href);
  assert.ok(link.startsWith(`${BASE_URL}/files/`), `the download link is on the HTTPS origin: ${link}`);
  // Fetched by Chromium itself, so its TLS (and the CA it trusts) is what is tested.
  const sha256 = await page.evaluate(async (href) => {
    const response = await fetch(href);
    if (response.status !== 200) {
      throw new Error(`GET ${href}: ${response.status}`);
    }
    const digest = await crypto.subtle.digest("SHA-256", await response.arrayBuffer());
    return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  }, link);
  assert.equal(sha256, file.sha256);
});
