/**
 * Uploads a previous page load left unfinished, with how far each got on the server. Choosing
 * the same file again resumes it (the uploads view matches it by fingerprint); Discard drops it.
 * Sessions the server no longer knows (expired, or finished elsewhere) are forgotten quietly.
 */
import { Code } from "@connectrpc/connect";
import type { StorageClient } from "./api";
import { byId, element } from "./dom";
import { describeError, hasCode } from "./errors";
import { formatBytes, formatPercent } from "./format";
import type { PendingUpload, PendingUploads } from "./pending-uploads";
import { discardSession } from "./resumable-upload";
import type { StatusLine } from "./status-line";

/** How far a recorded session got on the server, or why that is unknown. */
type Standing = { offset: number } | { problem: string };

export class InterruptedList {
  readonly #section = byId("interrupted", HTMLElement);
  readonly #list = byId("interrupted-list", HTMLUListElement);
  readonly #rows = new Map<string, HTMLLIElement>();
  readonly #storage: StorageClient;
  readonly #status: StatusLine;
  /** Bumped by clear(), so that a load finishing after it adds nothing. */
  #generation = 0;

  constructor(storage: StorageClient, status: StatusLine) {
    this.#storage = storage;
    this.#status = status;
  }

  /** Lists the recorded sessions except those `isActive` says are being uploaded right now. */
  async load(pending: PendingUploads, isActive: (fingerprint: string) => boolean): Promise<void> {
    this.clear();
    const generation = this.#generation;
    await Promise.all(
      pending.entries().map(async ([fingerprint, upload]) => {
        const standing = await this.#standing(pending, fingerprint, upload);
        if (standing !== undefined && generation === this.#generation && !isActive(fingerprint)) {
          this.#add(pending, fingerprint, upload, standing);
        }
      }),
    );
  }

  remove(fingerprint: string): void {
    this.#rows.get(fingerprint)?.remove();
    this.#rows.delete(fingerprint);
    this.#section.hidden = this.#rows.size === 0;
  }

  clear(): void {
    this.#generation += 1;
    this.#rows.clear();
    this.#list.replaceChildren();
    this.#section.hidden = true;
  }

  /** Asks the server; undefined (and the record dropped) when it no longer knows the session. */
  async #standing(
    pending: PendingUploads,
    fingerprint: string,
    upload: PendingUpload,
  ): Promise<Standing | undefined> {
    try {
      const status = await this.#storage.getUploadStatus({ uploadId: upload.uploadId });
      return { offset: Number(status.offset) };
    } catch (err) {
      if (hasCode(err, Code.NotFound)) {
        pending.remove(fingerprint);
        return undefined;
      }
      return { problem: describeError(err) };
    }
  }

  #add(pending: PendingUploads, fingerprint: string, upload: PendingUpload, standing: Standing): void {
    const known = "offset" in standing;
    const fraction = known && upload.size > 0 ? standing.offset / upload.size : 0;
    const discard = element(
      "button",
      { type: "button", "data-testid": "discard", "aria-label": `Discard the upload of ${upload.filename}` },
      "Discard",
    );
    discard.addEventListener("click", () => void this.#discard(pending, fingerprint, upload));
    const row = element(
      "li",
      { class: "interrupted-row", "data-testid": "interrupted-row" },
      element("span", { class: "name", "data-testid": "interrupted-name" }, upload.filename),
      element("progress", { max: "1", value: String(fraction), "aria-label": `Upload of ${upload.filename}` }),
      element("span", { class: "percent", "data-testid": "interrupted-percent" }, formatPercent(fraction)),
      element("span", { class: "size" }, `of ${formatBytes(upload.size)}`),
      discard,
      element(
        "p",
        { class: "message" },
        known ? "Choose this file again to resume." : `Progress unknown: ${standing.problem}`,
      ),
    );
    this.#rows.set(fingerprint, row);
    this.#list.append(row);
    this.#section.hidden = false;
  }

  async #discard(pending: PendingUploads, fingerprint: string, upload: PendingUpload): Promise<void> {
    try {
      await discardSession(this.#storage, upload.uploadId);
      pending.remove(fingerprint);
      this.remove(fingerprint);
      this.#status.showInfo(`Discarded the upload of ${upload.filename}.`);
    } catch (err) {
      this.#status.showFailure(`Could not discard the upload of ${upload.filename}`, err);
    }
  }
}
