/**
 * How failed calls read to people, and which failures are worth retrying.
 *
 * The services write their gRPC status messages for humans ("too many failed logins for this
 * email; try again in 812 seconds"), so the page shows `rawMessage` as is. Only failures that
 * never reached a service (the network, the browser) get a sentence of our own.
 */
import { Code, ConnectError } from "@connectrpc/connect";

/** The one sentence to show for a failure; never a stack trace. */
export function describeError(err: unknown): string {
  const error = ConnectError.from(err);
  if (isNetworkFailure(error)) {
    return "The server could not be reached. Check your connection and try again.";
  }
  return error.rawMessage || `The request failed (${Code[error.code]}).`;
}

/** True for failures where sending the same request again may well succeed. */
export function isTransient(err: unknown): boolean {
  const error = ConnectError.from(err);
  return (
    isNetworkFailure(error) ||
    error.code === Code.Unavailable ||
    error.code === Code.DeadlineExceeded ||
    error.code === Code.Aborted
  );
}

export function hasCode(err: unknown, code: Code): boolean {
  return ConnectError.from(err).code === code;
}

/**
 * Thrown when a call needs the session after it ended (its refresh token was refused, or
 * another tab signed out). The session announces its end itself, so callers stay quiet.
 */
export class SessionEndedError extends Error {}

/** True for a SessionEndedError, also once connect has wrapped it in a ConnectError. */
export function isSessionEnded(err: unknown): boolean {
  return err instanceof SessionEndedError || ConnectError.from(err).cause instanceof SessionEndedError;
}

// fetch() rejects with a TypeError when no HTTP response arrived at all; connect-web wraps
// it as an UNKNOWN error whose cause is that TypeError.
function isNetworkFailure(error: ConnectError): boolean {
  return error.code === Code.Unknown && error.cause instanceof TypeError;
}
