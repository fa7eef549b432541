/**
 * Upload sessions that outlive the page.
 *
 * Every session in flight is recorded in localStorage under a fingerprint of its file, so that
 * after a reload, picking the same file again resumes it instead of starting over. A page cannot
 * reopen a file by itself (it never learns the path), hence "pick it again". The records are
 * per user: an upload id means nothing to anyone else's session.
 */

/** What the page remembers about one unfinished upload session. */
export interface PendingUpload {
  uploadId: string;
  filename: string;
  size: number;
  /** The chunk size chosen when the session was created (GetUploadStatus does not repeat it). */
  chunkSize: number;
}

/** Identifies a file across page loads; a changed file gets a new fingerprint. */
export function fingerprint(file: File): string {
  return JSON.stringify([file.name, file.size, file.lastModified]);
}

export class PendingUploads {
  readonly #storage: Storage;
  readonly #key: string;

  constructor(storage: Storage, userId: string) {
    this.#storage = storage;
    this.#key = `strongbox.pending-uploads.${userId}`;
  }

  entries(): [string, PendingUpload][] {
    return Object.entries(this.#readAll());
  }

  get(fingerprint: string): PendingUpload | undefined {
    return this.#readAll()[fingerprint];
  }

  put(fingerprint: string, upload: PendingUpload): void {
    this.#writeAll({ ...this.#readAll(), [fingerprint]: upload });
  }

  remove(fingerprint: string): void {
    const uploads = this.#readAll();
    delete uploads[fingerprint];
    this.#writeAll(uploads);
  }

  // Read and written whole on every change, so two tabs never work from a stale copy.
  #readAll(): Record<string, PendingUpload> {
    const raw = this.#storage.getItem(this.#key);
    if (raw === null) {
      return {};
    }
    try {
      const value: unknown = JSON.parse(raw);
      if (typeof value !== "object" || value === null) {
        return {};
      }
      const entries = Object.entries(value as Record<string, unknown>);
      return Object.fromEntries(
        entries.filter((entry): entry is [string, PendingUpload] => isPendingUpload(entry[1])),
      );
    } catch {
      return {};
    }
  }

  #writeAll(uploads: Record<string, PendingUpload>): void {
    this.#storage.setItem(this.#key, JSON.stringify(uploads));
  }
}

function isPendingUpload(value: unknown): value is PendingUpload {
  if (typeof value !== "object" || value === null) {
    return false;
  }
  const upload = value as Record<string, unknown>;
  return (
    typeof upload["uploadId"] === "string" &&
    typeof upload["filename"] === "string" &&
    typeof upload["size"] === "number" &&
    typeof upload["chunkSize"] === "number"
  );
}
