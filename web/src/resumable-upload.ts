/**
 * One file through the resumable session API: CreateUpload (or, after a reload, the session
 * recorded for this file), UploadChunk at increasing offsets, CompleteUpload. A file of at most
 * 1 MiB skips all that and goes in one PutFile call.
 *
 * A browser cannot client-stream over grpc-web, so every chunk is its own unary call. Re-sending
 * an acknowledged chunk is harmless, so a chunk lost in transit is simply sent again, from the
 * offset GetUploadStatus reports.
 *
 * Each chunk is sent while the one before it is still being stored: the server lets it wait for
 * its predecessor, so sending and storing overlap instead of taking turns. A chunk that reached
 * the server before its predecessor is refused; it is then sent again, the ordinary way, once the
 * predecessor is answered. At most two chunks are in memory: File.slice reads lazily.
 */
import { Code } from "@connectrpc/connect";
import type { StorageClient } from "./api";
import { hasCode, isTransient } from "./errors";
import type { FileInfo } from "./gen/storage/v1/storage_pb";
import { fingerprint, type PendingUploads } from "./pending-uploads";

/**
 * Larger chunks would hold more of the file in memory and lose more on a failed attempt. On S3
 * each chunk is a multipart part, at least `minChunkSize` (5 MiB) but the last; 8 MiB is also
 * the server's default maximum.
 */
const MAX_CHUNK_BYTES = 8 * 1024 * 1024;
/**
 * Files up to this size go whole in one PutFile call: one round trip instead of three, and every
 * server takes at least 1 MiB in one message. Anything larger is worth a session, which survives
 * a lost connection or a reload.
 */
const WHOLE_FILE_MAX_BYTES = 1024 * 1024;
/** Tries per chunk before the upload fails: waits of 0.5, 1, 2 and 4 s between them. */
const ATTEMPTS_PER_CHUNK = 5;
const FIRST_RETRY_DELAY_MS = 500;

interface Session {
  uploadId: string;
  chunkSize: number;
}

/** A session ready for bytes, and the offset the server holds for it. */
interface OpenedSession {
  session: Session;
  offset: number;
}

export class ResumableUpload {
  readonly file: File;
  readonly fingerprint: string;
  readonly #storage: StorageClient;
  readonly #pending: PendingUploads;
  readonly #stop = new AbortController();

  constructor(file: File, storage: StorageClient, pending: PendingUploads) {
    this.file = file;
    this.fingerprint = fingerprint(file);
    this.#storage = storage;
    this.#pending = pending;
  }

  /** True once stop() or cancel() was called. */
  get stopped(): boolean {
    return this.#stop.signal.aborted;
  }

  /**
   * Sends the file and returns the stored file. `onProgress` gets the number of bytes the server
   * holds: first where the upload starts (above 0 when resuming), then after every chunk.
   */
  async run(onProgress: (offset: number) => void): Promise<FileInfo> {
    if (this.file.size <= WHOLE_FILE_MAX_BYTES && this.#pending.get(this.fingerprint) === undefined) {
      onProgress(0);
      const file = await this.#putWhole();
      onProgress(this.file.size);
      return file;
    }
    const { session, offset: start } = await this.#openSession();
    let offset = start;
    onProgress(offset);
    let current = offset < this.file.size ? this.#sendChunk(session, offset) : undefined;
    while (current !== undefined) {
      const end = Math.min(offset + session.chunkSize, this.file.size);
      const next = end < this.file.size ? this.#sendAhead(session, end, current) : undefined;
      // Its failure is reported when it is awaited; if this chunk fails first, it never is.
      next?.catch(() => undefined);
      offset = await current;
      onProgress(offset);
      current = next;
    }
    const { file } = await this.#storage.completeUpload(
      { uploadId: session.uploadId },
      { signal: this.#stop.signal },
    );
    this.#pending.remove(this.fingerprint);
    if (file === undefined) {
      throw new Error("The server completed the upload without describing the file.");
    }
    return file;
  }

  /** Stops sending (resumable later: the session stays recorded), e.g. when signing out. */
  stop(): void {
    this.#stop.abort();
  }

  /** Stops sending and discards the session with the bytes the server already holds. */
  async cancel(): Promise<void> {
    this.stop();
    const recorded = this.#pending.get(this.fingerprint);
    if (recorded === undefined) {
      return;
    }
    await discardSession(this.#storage, recorded.uploadId);
    this.#pending.remove(this.fingerprint);
  }

  /**
   * Sends the whole file in one call. A failure is not retried: if only the answer was lost, the
   * file is stored, and sending it again would store it twice. Choosing the file again retries.
   */
  async #putWhole(): Promise<FileInfo> {
    const { file } = this;
    const data = new Uint8Array(await file.arrayBuffer());
    const { file: stored } = await this.#storage.putFile(
      { metadata: { filename: file.name, contentType: file.type, size: BigInt(file.size) }, data },
      { signal: this.#stop.signal },
    );
    if (stored === undefined) {
      throw new Error("The server stored the file without describing it.");
    }
    return stored;
  }

  /** The recorded session for this file if the server still has it, else a new one. */
  async #openSession(): Promise<OpenedSession> {
    const signal = this.#stop.signal;
    const recorded = this.#pending.get(this.fingerprint);
    if (recorded !== undefined) {
      try {
        const status = await this.#storage.getUploadStatus({ uploadId: recorded.uploadId }, { signal });
        return { session: recorded, offset: Number(status.offset) };
      } catch (err) {
        if (!hasCode(err, Code.NotFound)) {
          throw err;
        }
        // Expired or finished meanwhile: start over.
        this.#pending.remove(this.fingerprint);
      }
    }
    const { file } = this;
    const created = await this.#storage.createUpload(
      { metadata: { filename: file.name, contentType: file.type, size: BigInt(file.size) } },
      { signal },
    );
    const session = {
      uploadId: created.uploadId,
      chunkSize: Math.max(
        Math.min(Number(created.maxChunkSize), MAX_CHUNK_BYTES),
        Number(created.minChunkSize),
      ),
    };
    if (session.chunkSize < 1 || session.chunkSize > Number(created.maxChunkSize)) {
      throw new Error("The server allows no usable chunk size; the upload cannot start.");
    }
    this.#pending.put(this.fingerprint, { ...session, filename: file.name, size: file.size });
    return { session, offset: 0 };
  }

  /**
   * Sends the chunk at `offset` now, while `before` (the chunk ending there) is still on its way;
   * if that attempt fails, sends it the ordinary way once `before` is answered, from the offset
   * `before` left the session at.
   */
  async #sendAhead(session: Session, offset: number, before: Promise<number>): Promise<number> {
    const early = this.#putChunk(session, offset).catch(() => undefined);
    const [stored, sent] = await Promise.all([before, early]);
    if (sent !== undefined) {
      return sent;
    }
    return stored >= this.file.size ? stored : this.#sendChunk(session, stored);
  }

  /** Sends the chunk at `offset`, retrying network failures; returns the next offset. */
  async #sendChunk(session: Session, offset: number): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      try {
        // After a failure the server may or may not have stored the chunk: ask.
        const from = attempt === 1 ? offset : await this.#serverOffset(session);
        if (from >= this.file.size) {
          return from;
        }
        return await this.#putChunk(session, from);
      } catch (err) {
        if (this.stopped || !isTransient(err) || attempt === ATTEMPTS_PER_CHUNK) {
          throw err;
        }
        await sleep(FIRST_RETRY_DELAY_MS * 2 ** (attempt - 1), this.#stop.signal);
      }
    }
  }

  async #putChunk(session: Session, offset: number): Promise<number> {
    const signal = this.#stop.signal;
    const end = Math.min(offset + session.chunkSize, this.file.size);
    const data = new Uint8Array(await this.file.slice(offset, end).arrayBuffer());
    const response = await this.#storage.uploadChunk(
      { uploadId: session.uploadId, offset: BigInt(offset), data },
      { signal },
    );
    const next = Number(response.offset);
    if (next < end) {
      // The contract says the session then holds every byte up to `end`; anything else would
      // loop forever sending the same chunk.
      throw new Error(`The server kept ${next} of the first ${end} bytes; the upload cannot continue.`);
    }
    return next;
  }

  async #serverOffset(session: Session): Promise<number> {
    const status = await this.#storage.getUploadStatus(
      { uploadId: session.uploadId },
      { signal: this.#stop.signal },
    );
    return Number(status.offset);
  }
}

/** Discards a session on the server; one the server no longer knows is as good as discarded. */
export async function discardSession(storage: StorageClient, uploadId: string): Promise<void> {
  try {
    await storage.abortUpload({ uploadId });
  } catch (err) {
    if (!hasCode(err, Code.NotFound)) {
      throw err;
    }
  }
}

/** Waits `ms`, or less when `signal` aborts (then rejects, like the calls it sits between). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      window.clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = window.setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
