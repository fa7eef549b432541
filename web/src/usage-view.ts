/**
 * The usage line under "My files": how many files and bytes the caller stores, against the
 * server's limits, with a meter of the share used when there is a byte quota.
 *
 * Usage is a courtesy beside the list, so a failure to fetch it only hides the line: the list,
 * and the status line, carry on as before. Refreshes overlap (an upload ends while a delete is
 * under way), so an answer to an older request is dropped.
 */
import type { StorageClient } from "./api";
import { byId } from "./dom";
import { formatBytes, formatPercent } from "./format";
import type { GetUsageResponse } from "./gen/storage/v1/storage_pb";

/** From here on the meter reads as "nearly full", and past the second as "full". */
const NEARLY_FULL = 0.8;
const FULL = 0.95;

export class UsageView {
  readonly #line = byId("usage", HTMLElement);
  readonly #text = byId("usage-text", HTMLElement);
  readonly #meter = byId("usage-meter", HTMLMeterElement);
  readonly #storage: StorageClient;
  /** Bumped by every refresh and clear, so that an answer from before is dropped. */
  #generation = 0;

  constructor(storage: StorageClient) {
    this.#storage = storage;
  }

  async refresh(): Promise<void> {
    const generation = ++this.#generation;
    try {
      const usage = await this.#storage.getUsage({});
      if (generation === this.#generation) {
        this.#show(usage);
      }
    } catch {
      if (generation === this.#generation) {
        this.#line.hidden = true;
      }
    }
  }

  clear(): void {
    this.#generation += 1;
    this.#line.hidden = true;
    this.#text.textContent = "";
  }

  #show(usage: GetUsageResponse): void {
    const used = Number(usage.bytesUsed);
    const quota = usage.quotaBytes === undefined ? undefined : Number(usage.quotaBytes);
    const bytes = quota === undefined ? formatBytes(used) : `${formatBytes(used)} of ${formatBytes(quota)}`;
    this.#text.textContent = `${describeFiles(usage.files, usage.maxFiles)} · ${bytes}`;
    this.#showMeter(used, quota);
    this.#line.hidden = false;
  }

  #showMeter(used: number, quota: number | undefined): void {
    this.#meter.hidden = quota === undefined;
    if (quota === undefined) {
      return;
    }
    // A zero quota is full at zero bytes; max="0" would make the meter meaningless.
    const max = Math.max(quota, 1);
    this.#meter.max = max;
    this.#meter.low = max * NEARLY_FULL;
    this.#meter.high = max * FULL;
    this.#meter.optimum = 0;
    this.#meter.value = Math.min(used, max);
    const share = quota === 0 ? 1 : used / quota;
    this.#meter.setAttribute(
      "aria-valuetext",
      `${formatPercent(share)} used: ${formatBytes(used)} of ${formatBytes(quota)}`,
    );
  }
}

/** "1 file", "3 files", or with a limit "3 of 100 files". */
function describeFiles(files: bigint, maxFiles: bigint | undefined): string {
  const count = files.toLocaleString();
  if (maxFiles === undefined) {
    return `${count} ${files === 1n ? "file" : "files"}`;
  }
  return `${count} of ${maxFiles.toLocaleString()} ${maxFiles === 1n ? "file" : "files"}`;
}
