/**
 * The transports the typed clients run on.
 *
 * The gateway serves this page and grpc-web for both services on one origin, so calls go to
 * `location.origin` with no CORS involved. Binary grpc-web keeps 4 MiB upload chunks at 4 MiB
 * on the wire (the text format would base64 them).
 */
import { type Client, Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import type { AuthService } from "./gen/auth/v1/auth_pb";
import type { StorageService } from "./gen/storage/v1/storage_pb";

export type AuthClient = Client<typeof AuthService>;
export type StorageClient = Client<typeof StorageService>;

/** Where a bearer token comes from: the signed-in session. */
export interface AccessTokens {
  /** A token that is valid for a while yet. */
  accessToken(): Promise<string>;
  /** A new token, even if the current one has not expired. */
  refresh(): Promise<string>;
}

export function createTransport(interceptors: Interceptor[] = []): Transport {
  return createGrpcWebTransport({ baseUrl: location.origin, useBinaryFormat: true, interceptors });
}

/**
 * Sends `authorization: Bearer <access token>` with every call. A token the server refuses
 * (revoked, or signed with a key that has since been rotated) is refreshed once and the call
 * sent again; a second refusal reaches the caller.
 */
export function bearer(tokens: AccessTokens): Interceptor {
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${await tokens.accessToken()}`);
    try {
      return await next(request);
    } catch (err) {
      if (ConnectError.from(err).code !== Code.Unauthenticated) {
        throw err;
      }
      request.header.set("authorization", `Bearer ${await tokens.refresh()}`);
      return await next(request);
    }
  };
}
