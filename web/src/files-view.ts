/**
 * "My files": the caller's files, newest first, a page at a time, each with Download and Delete,
 * under the usage line (usage-view.ts), which is refreshed whenever the list starts over.
 *
 * Listed URLs expire (`url_expires_at`), so a click on Download asks for a fresh one first;
 * the listed URL stays in `href` for opening in a new tab or copying.
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { StorageClient } from "./api";
import { byId, element } from "./dom";
import { formatBytes, formatDate } from "./format";
import type { FileInfo } from "./gen/storage/v1/storage_pb";
import type { StatusLine } from "./status-line";
import type { UsageView } from "./usage-view";

const PAGE_SIZE = 20;

export class FilesView {
  readonly #list = byId("files", HTMLUListElement);
  readonly #empty = byId("files-empty", HTMLElement);
  readonly #loadMore = byId("load-more", HTMLButtonElement);
  readonly #storage: StorageClient;
  readonly #status: StatusLine;
  readonly #usage: UsageView;
  #nextPageToken = "";
  /** Bumped whenever the list starts over, so that a page from before is dropped. */
  #generation = 0;

  constructor(storage: StorageClient, status: StatusLine, usage: UsageView) {
    this.#storage = storage;
    this.#status = status;
    this.#usage = usage;
    this.#loadMore.addEventListener("click", () => void this.#loadPage(this.#nextPageToken));
  }

  /** Shows the first page again, and the usage with it, e.g. after an upload or a delete. */
  async reload(): Promise<void> {
    this.#startOver();
    // The usage line keeps its old numbers until the new ones arrive, rather than blink.
    await Promise.all([this.#loadPage(""), this.#usage.refresh()]);
  }

  clear(): void {
    this.#startOver();
    this.#usage.clear();
  }

  #startOver(): void {
    this.#generation += 1;
    this.#list.replaceChildren();
    this.#empty.hidden = true;
    this.#loadMore.hidden = true;
  }

  async #loadPage(pageToken: string): Promise<void> {
    const generation = this.#generation;
    this.#loadMore.disabled = true;
    try {
      const page = await this.#storage.listFiles({ pageSize: PAGE_SIZE, pageToken });
      if (generation !== this.#generation) {
        return;
      }
      this.#list.append(...page.files.map((file) => this.#row(file)));
      this.#nextPageToken = page.nextPageToken;
      this.#loadMore.hidden = page.nextPageToken === "";
      this.#empty.hidden = this.#list.childElementCount > 0;
    } catch (err) {
      if (generation === this.#generation) {
        this.#status.showFailure("Could not list your files", err);
      }
    } finally {
      this.#loadMore.disabled = false;
    }
  }

  #row(file: FileInfo): HTMLLIElement {
    const created = file.createdAt === undefined ? undefined : timestampDate(file.createdAt);
    const details = [formatBytes(Number(file.size)), created === undefined ? "" : formatDate(created)];
    const download = element(
      "a",
      {
        href: file.url,
        download: file.filename,
        target: "_blank",
        rel: "noopener",
        "data-testid": "download",
        "aria-label": `Download ${file.filename}`,
      },
      "Download",
    );
    download.addEventListener("click", (event) => {
      event.preventDefault();
      void this.#download(file);
    });
    const remove = element(
      "button",
      { type: "button", "data-testid": "delete", "aria-label": `Delete ${file.filename}` },
      "Delete",
    );
    remove.addEventListener("click", () => void this.#delete(file));
    return element(
      "li",
      { class: "file-row", "data-testid": "file-row" },
      element("span", { class: "name", "data-testid": "file-name" }, file.filename),
      element("span", { class: "details" }, details.filter(Boolean).join(" · ")),
      download,
      remove,
    );
  }

  async #download(file: FileInfo): Promise<void> {
    try {
      const { url } = await this.#storage.getDownloadUrl({ key: file.key });
      // A same-origin link (the gateway's signed links) downloads in place; another origin's
      // (S3) ignores `download` and opens in a new tab. Either way this page, and any upload
      // under way, stays.
      element("a", { href: url, download: file.filename, target: "_blank", rel: "noopener" }).click();
    } catch (err) {
      this.#status.showFailure(`Could not download ${file.filename}`, err);
    }
  }

  async #delete(file: FileInfo): Promise<void> {
    if (!window.confirm(`Delete ${file.filename}? This cannot be undone.`)) {
      return;
    }
    try {
      await this.#storage.deleteFile({ key: file.key });
      this.#status.showInfo(`Deleted ${file.filename}.`);
      await this.reload();
    } catch (err) {
      this.#status.showFailure(`Could not delete ${file.filename}`, err);
    }
  }
}
