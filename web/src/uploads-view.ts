/**
 * Choosing files (picker or drag and drop) and the uploads under way.
 *
 * Every chosen file starts at once, as its own ResumableUpload; each holds at most one chunk in
 * memory, and the browser's connection limit per server paces them. A file that matches an
 * interrupted session resumes it.
 */
import type { StorageClient } from "./api";
import { byId } from "./dom";
import { describeError } from "./errors";
import { InterruptedList } from "./interrupted-list";
import { fingerprint, type PendingUploads } from "./pending-uploads";
import { ResumableUpload } from "./resumable-upload";
import type { StatusLine } from "./status-line";
import { UploadRow } from "./upload-row";

export class UploadsView {
  readonly #input = byId("file-input", HTMLInputElement);
  readonly #dropZone = byId("drop-zone", HTMLButtonElement);
  readonly #rows = byId("uploads", HTMLUListElement);
  readonly #interrupted: InterruptedList;
  /** Uploads under way, by file fingerprint: one file is never sent twice at once. */
  readonly #active = new Map<string, ResumableUpload>();
  readonly #storage: StorageClient;
  readonly #status: StatusLine;
  readonly #onUploaded: () => void;
  /** Set while someone is signed in. */
  #pending: PendingUploads | undefined;

  constructor(storage: StorageClient, status: StatusLine, onUploaded: () => void) {
    this.#storage = storage;
    this.#status = status;
    this.#onUploaded = onUploaded;
    this.#interrupted = new InterruptedList(storage, status);
    this.#listenForFiles();
  }

  /** Starts taking files for the user whose sessions `pending` records. */
  open(pending: PendingUploads): void {
    this.#pending = pending;
    void this.#interrupted.load(pending, (print) => this.#active.has(print));
  }

  /** Stops every upload where it stands, still resumable, and forgets the rows. */
  close(): void {
    this.#pending = undefined;
    for (const upload of this.#active.values()) {
      upload.stop();
    }
    this.#active.clear();
    this.#rows.replaceChildren();
    this.#interrupted.clear();
  }

  #listenForFiles(): void {
    // The drop zone is a real button, so Enter and Space open the picker like a click does.
    this.#dropZone.addEventListener("click", () => this.#input.click());
    this.#input.addEventListener("change", () => {
      this.#startAll(this.#input.files);
      // Choosing the same file again (to retry or resume it) must fire `change` again.
      this.#input.value = "";
    });
    this.#dropZone.addEventListener("dragenter", (event) => this.#acceptDrag(event));
    this.#dropZone.addEventListener("dragover", (event) => this.#acceptDrag(event));
    this.#dropZone.addEventListener("dragleave", () => this.#dropZone.classList.remove("dragging"));
    this.#dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.#dropZone.classList.remove("dragging");
      this.#startAll(event.dataTransfer?.files ?? null);
    });
    // A file dropped next to the zone would make the browser open it, leaving the page and
    // cutting every upload short.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
  }

  #acceptDrag(event: DragEvent): void {
    event.preventDefault();
    this.#dropZone.classList.add("dragging");
  }

  #startAll(files: FileList | null): void {
    for (const file of files ?? []) {
      this.#start(file);
    }
  }

  #start(file: File): void {
    const pending = this.#pending;
    if (pending === undefined) {
      return;
    }
    const print = fingerprint(file);
    if (this.#active.has(print)) {
      this.#status.showInfo(`${file.name} is already being uploaded.`);
      return;
    }
    const upload = new ResumableUpload(file, this.#storage, pending);
    const row = new UploadRow(file.name, file.size, {
      cancel: () => void this.#cancel(upload, row),
      dismiss: () => row.element.remove(),
    });
    this.#active.set(print, upload);
    this.#interrupted.remove(print);
    this.#rows.append(row.element);
    void this.#run(upload, row);
  }

  async #run(upload: ResumableUpload, row: UploadRow): Promise<void> {
    const { name } = upload.file;
    try {
      await upload.run((offset) => row.showProgress(offset));
      row.finish("done", "Uploaded.");
      this.#status.showInfo(`Uploaded ${name}.`);
      this.#onUploaded();
    } catch (err) {
      if (upload.stopped) {
        return; // Cancel, or signing out, has already said what happened.
      }
      // The session stays recorded: choosing the file again resumes it.
      row.finish("failed", describeError(err));
      this.#status.showFailure(`Could not upload ${name}`, err);
    } finally {
      // A sign-out and a new sign-in may have started this file again meanwhile.
      if (this.#active.get(upload.fingerprint) === upload) {
        this.#active.delete(upload.fingerprint);
      }
    }
  }

  async #cancel(upload: ResumableUpload, row: UploadRow): Promise<void> {
    row.finish("cancelled", "Cancelled.");
    try {
      await upload.cancel();
    } catch (err) {
      this.#status.showFailure(`Could not discard the upload of ${upload.file.name}`, err);
    }
  }
}
