/**
 * The signed-in session: the token pair, kept in localStorage so a reload stays signed in, and
 * refreshed about a minute before the access token expires.
 *
 * localStorage, not memory, is the source of truth, so every tab sees the pair the last refresh
 * wrote. That matters because refresh tokens are single-use: presenting one twice revokes the
 * whole session. So a tab refreshes through one shared promise, and tabs take turns through a
 * Web Lock, checking inside it whether another tab has already rotated the pair.
 */
import type { AccessTokens, AuthClient } from "./api";
import { describeError, isTransient, SessionEndedError } from "./errors";
import type { TokenPair } from "./gen/auth/v1/auth_pb";

const STORAGE_KEY = "strongbox.session";
/** Refresh this long before the access token expires, so that no call races the expiry. */
const REFRESH_MARGIN_MS = 60_000;
/** When a refresh could not reach the server, try again after this long. */
const RETRY_REFRESH_MS = 15_000;
/** setTimeout fires at once for delays beyond 2^31 - 1 ms; sleep at most a day at a time. */
const MAX_TIMER_MS = 86_400_000;

interface StoredTokens {
  accessToken: string;
  refreshToken: string;
  /** When to replace the access token, in milliseconds since the epoch. */
  refreshAt: number;
}

export class Session implements AccessTokens {
  readonly #auth: AuthClient;
  readonly #storage: Storage;
  readonly #onEnded: (message: string) => void;
  #refreshing: Promise<string> | undefined;
  #timer: number | undefined;

  /** `onEnded` runs when the session ends by itself (its refresh token was refused). */
  constructor(auth: AuthClient, storage: Storage, onEnded: (message: string) => void) {
    this.#auth = auth;
    this.#storage = storage;
    this.#onEnded = onEnded;
  }

  /** Picks up the session a previous page load left; false when there is none. */
  resume(): boolean {
    if (this.#read() === undefined) {
      return false;
    }
    this.#scheduleRefresh();
    return true;
  }

  /** Starts a session with the pair Login returned. */
  begin(pair: TokenPair): void {
    this.#write(pair);
    this.#scheduleRefresh();
  }

  async accessToken(): Promise<string> {
    const tokens = this.#read();
    if (tokens === undefined) {
      throw this.#end("You are signed out. Log in to continue.");
    }
    if (Date.now() < tokens.refreshAt) {
      return tokens.accessToken;
    }
    return this.refresh();
  }

  refresh(): Promise<string> {
    const presented = this.#read()?.refreshToken;
    this.#refreshing ??= withTokenLock(() => this.#rotate(presented)).finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  /** Ends the session here at once, then on the server (Logout is idempotent). */
  async logout(): Promise<void> {
    const tokens = this.#read();
    this.#forget();
    if (tokens !== undefined) {
      await this.#auth.logout({ refreshToken: tokens.refreshToken });
    }
  }

  async #rotate(presented: string | undefined): Promise<string> {
    const tokens = this.#read();
    if (tokens === undefined) {
      throw this.#end("You are signed out. Log in to continue.");
    }
    if (tokens.refreshToken !== presented) {
      // Another tab rotated the pair while this one waited for the lock.
      this.#scheduleRefresh();
      return tokens.accessToken;
    }
    try {
      const { tokens: pair } = await this.#auth.refresh({ refreshToken: tokens.refreshToken });
      if (pair === undefined) {
        throw new Error("The server answered the refresh without tokens.");
      }
      this.begin(pair);
      return pair.accessToken;
    } catch (err) {
      if (isTransient(err)) {
        // The server may be back in a moment and the session is still valid there.
        this.#scheduleRefresh(RETRY_REFRESH_MS);
        throw err;
      }
      throw this.#end(`Your session has ended (${describeError(err)}). Log in again.`);
    }
  }

  #end(message: string): SessionEndedError {
    this.#forget();
    this.#onEnded(message);
    return new SessionEndedError(message);
  }

  #forget(): void {
    window.clearTimeout(this.#timer);
    this.#storage.removeItem(STORAGE_KEY);
  }

  #scheduleRefresh(delayMs?: number): void {
    window.clearTimeout(this.#timer);
    const tokens = this.#read();
    if (tokens === undefined) {
      return;
    }
    const due = delayMs ?? tokens.refreshAt - Date.now();
    this.#timer = window.setTimeout(() => {
      // A failed refresh has already either ended the session (reported through onEnded)
      // or scheduled another attempt; nobody else is waiting for this one.
      this.refresh().catch(() => undefined);
    }, clamp(due, 0, MAX_TIMER_MS));
  }

  #write(pair: TokenPair): void {
    // `expires_in` is relative, so the time is right even when this clock is not. A lifetime
    // shorter than two margins is refreshed halfway instead, not in an endless loop.
    const lifetimeMs = Number(pair.expiresIn) * 1000;
    const tokens: StoredTokens = {
      accessToken: pair.accessToken,
      refreshToken: pair.refreshToken,
      refreshAt: Date.now() + Math.max(lifetimeMs - REFRESH_MARGIN_MS, lifetimeMs / 2),
    };
    this.#storage.setItem(STORAGE_KEY, JSON.stringify(tokens));
  }

  #read(): StoredTokens | undefined {
    const raw = this.#storage.getItem(STORAGE_KEY);
    if (raw === null) {
      return undefined;
    }
    try {
      const value: unknown = JSON.parse(raw);
      return isStoredTokens(value) ? value : undefined;
    } catch {
      return undefined;
    }
  }
}

// Web Locks exist only in secure contexts (https, or http on localhost). Elsewhere a page
// falls back to refreshing unserialised, which only matters with several tabs open.
function withTokenLock<T>(task: () => Promise<T>): Promise<T> {
  return window.isSecureContext ? navigator.locks.request("strongbox.token-refresh", task) : task();
}

function isStoredTokens(value: unknown): value is StoredTokens {
  if (typeof value !== "object" || value === null) {
    return false;
  }
  const tokens = value as Record<string, unknown>;
  return (
    typeof tokens["accessToken"] === "string" &&
    typeof tokens["refreshToken"] === "string" &&
    typeof tokens["refreshAt"] === "number"
  );
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(Math.max(value, min), max);
}
