// End-to-end: download links in a real Chromium, as people use them: a download cut off
// mid-way resumes where it stopped, and a <video> plays a stored video and seeks in it. Both
// rest on the links answering byte ranges (206) with a strong ETag.
//
//   STRONGBOX_URL=http://localhost:8000 node --test web/e2e/
//
// Like upload.test.mjs, it needs a running gateway and Chromium, and fails rather than skips
// without them. fixtures/clip.webm is a 6-second 160×90 VP8 test pattern, made with
//   ffmpeg -f lavfi -i testsrc2=size=160x90:rate=10:duration=6 -c:v libvpx -b:v 80k -g 10 \
//     -an -fflags +bitexact -map_metadata -1 clip.webm
import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { open } from "node:fs/promises";
import { createServer, request as httpRequest } from "node:http";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { MiB, fileRow, openPage, randomFile, registerAndLogIn, useChromium } from "./support.mjs";

const VIDEO = fileURLToPath(new URL("fixtures/clip.webm", import.meta.url));
const VIDEO_SECONDS = 6;

const chromium = useChromium("downloads");

test("a download cut off mid-way resumes in Chromium where it stopped", { timeout: 180_000 }, async (t) => {
  const page = await openPage(chromium.browser, t, { acceptDownloads: true });
  await registerAndLogIn(page);
  const file = await randomFile(chromium.scratch, `e2e-resume-${randomUUID()}.bin`, 16 * MiB);
  const link = new URL(await uploadedLink(page, file.path, file.name));

  // Chromium fetches the link through a proxy that cuts the first response off after 4 MiB,
  // as a dropped connection would. Chromium then resumes on its own, asking for the rest
  // (Range, with If-Range naming the ETag), and the file it saves must be whole.
  const proxy = await cuttingProxy(link, 4 * MiB);
  t.after(() => proxy.close());
  const started = page.waitForEvent("download");
  await page.evaluate((href) => {
    const anchor = document.createElement("a");
    anchor.href = href;
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
  }, new URL(link.pathname + link.search, proxy.url).href);
  const download = await started;
  const saved = await download.path();
  assert.equal(await download.failure(), null);
  assert.equal(await sha256Of(saved), file.sha256, "the resumed download is not the file");

  const [first, ...later] = proxy.seen;
  assert.equal(first.range, undefined, "the first request asks for the whole file");
  assert.equal(first.cut, true, "the first response was cut off");
  assert.ok(later.length > 0, "Chromium never came back for the rest");
  for (const resumed of later) {
    const offset = Number(resumed.range?.match(/^bytes=(\d+)-$/)?.[1]);
    assert.ok(offset > 0 && offset <= 4 * MiB, `Chromium restarted instead of resuming: Range ${resumed.range}`);
    assert.equal(resumed.ifRange, `"${file.sha256}"`, "resumed without the ETag as If-Range");
    assert.equal(resumed.status, 206);
    assert.equal(resumed.contentRange, `bytes ${offset}-${16 * MiB - 1}/${16 * MiB}`);
  }
});

test("a <video> plays a stored video from its link and seeks in it", { timeout: 120_000 }, async (t) => {
  const page = await openPage(chromium.browser, t, { acceptDownloads: true });
  await registerAndLogIn(page);
  const link = await uploadedLink(page, VIDEO, "clip.webm");

  // A page of the link's own origin holds the video (the app's CSP allows no media); the link
  // stays an attachment, which media elements do not care about.
  const holder = new URL(`/e2e-video-${randomUUID()}`, link).href;
  await page.route(holder, (route) =>
    route.fulfill({ contentType: "text/html", body: "<!doctype html><title>video</title><body></body>" }),
  );
  await page.goto(holder);
  await page.unroute(holder);

  const answers = [];
  page.on("response", (response) => {
    if (response.url() === link) {
      answers.push(
        response.request().allHeaders().then((headers) => ({
          range: headers.range,
          status: response.status(),
          contentRange: response.headers()["content-range"],
        })),
      );
    }
  });
  const played = await page.evaluate(async (src) => {
    const video = document.createElement("video");
    video.muted = true;
    video.preload = "metadata";
    document.body.append(video);
    const next = (event) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${event} within 20 s`)), 20_000);
        video.addEventListener(event, () => resolve(clearTimeout(timer)), { once: true });
        video.addEventListener("error", () => reject(new Error(`media error ${video.error?.code}: ${video.error?.message}`)), {
          once: true,
        });
      });
    const metadata = next("loadedmetadata");
    video.src = src;
    await metadata;
    const target = video.duration * 0.75;
    const seeked = next("seeked");
    video.currentTime = target;
    await seeked;
    return {
      duration: video.duration,
      seekable: [...Array(video.seekable.length).keys()].map((i) => [video.seekable.start(i), video.seekable.end(i)]),
      target,
      currentTime: video.currentTime,
    };
  }, link);

  assert.ok(Math.abs(played.duration - VIDEO_SECONDS) < 0.2, `duration ${played.duration}`);
  // A source without range support is a stream to Chromium: seekable only at 0.
  assert.equal(played.seekable.length, 1, JSON.stringify(played.seekable));
  assert.ok(Math.abs(played.seekable[0][1] - played.duration) < 0.2, `seekable ${JSON.stringify(played.seekable)}`);
  assert.ok(Math.abs(played.currentTime - played.target) < 0.05, `seeked to ${played.currentTime}, not ${played.target}`);
  const seen = await Promise.all(answers);
  assert.ok(seen.length > 0, "the video loaded nothing from its link");
  for (const answer of seen) {
    assert.match(answer.range ?? "", /^bytes=\d+-\d*$/, "Chromium asks media for ranges");
    assert.equal(answer.status, 206, JSON.stringify(answer));
    assert.match(answer.contentRange ?? "", /^bytes \d+-\d+\/\d+$/, JSON.stringify(answer));
  }
});

/** Uploads `path` through the page and returns the download link it lists for it. */
async function uploadedLink(page, path, name) {
  await page.setInputFiles("#file-input", path);
  const row = fileRow(page, name);
  await row.waitFor();
  return row.locator('[data-testid="download"]').evaluate((anchor) => anchor.href);
}

async function sha256Of(path) {
  const hash = createHash("sha256");
  const handle = await open(path);
  try {
    for await (const chunk of handle.createReadStream()) {
      hash.update(chunk);
    }
  } finally {
    await handle.close();
  }
  return hash.digest("hex");
}

/**
 * An HTTP proxy on a free loopback port to `target`'s host that passes every request on, and
 * cuts the first response off after `cutAfter` bytes of its body by closing the connection.
 * `seen` records each request's Range and If-Range and what the gateway answered.
 */
async function cuttingProxy(target, cutAfter) {
  const seen = [];
  const server = createServer((request, response) => {
    const record = { range: request.headers.range, ifRange: request.headers["if-range"], cut: false };
    seen.push(record);
    const cutting = seen.length === 1;
    const upstream = httpRequest(
      {
        host: target.hostname,
        port: target.port,
        method: request.method,
        path: request.url,
        headers: { ...request.headers, host: target.host },
      },
      (answer) => {
        record.status = answer.statusCode;
        record.contentRange = answer.headers["content-range"];
        response.writeHead(answer.statusCode, answer.headers);
        if (!cutting) {
          answer.pipe(response);
          return;
        }
        let sent = 0;
        answer.on("data", (chunk) => {
          if (record.cut) {
            return;
          }
          const part = chunk.subarray(0, cutAfter - sent);
          sent += part.length;
          response.write(part);
          if (sent >= cutAfter) {
            // Content-Length promised more: to Chromium this is a connection lost mid-way.
            record.cut = true;
            answer.destroy();
            response.socket.end();
          }
        });
      },
    );
    upstream.on("error", () => response.destroy());
    request.pipe(upstream);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    seen,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}
