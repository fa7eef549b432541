/**
 * The Strongbox upload page: builds the clients, the session and the views, and switches
 * between signed out (the sign-in form) and signed in (uploads and files).
 *
 * Two transports: calls that create a session (Register, Login, Refresh, Logout) go out bare;
 * everything else carries the session's bearer token.
 */
import { createClient } from "@connectrpc/connect";
import { AccountBar } from "./account-bar";
import { bearer, createTransport } from "./api";
import { byId } from "./dom";
import { FilesView } from "./files-view";
import { AuthService } from "./gen/auth/v1/auth_pb";
import { StorageService } from "./gen/storage/v1/storage_pb";
import { PendingUploads } from "./pending-uploads";
import { Session } from "./session";
import { SignInForm } from "./sign-in-form";
import { StatusLine } from "./status-line";
import { UploadsView } from "./uploads-view";
import { UsageView } from "./usage-view";

const status = new StatusLine(byId("status", HTMLElement));
const auth = createClient(AuthService, createTransport());
const session = new Session(auth, localStorage, (message) => {
  showSignedOut();
  status.showError(message);
});
const userTransport = createTransport([bearer(session)]);
const account = createClient(AuthService, userTransport);
const storage = createClient(StorageService, userTransport);

const workspace = byId("workspace", HTMLElement);
const files = new FilesView(storage, status, new UsageView(storage));
const uploads = new UploadsView(storage, status, () => void files.reload());
const signIn = new SignInForm(auth, status, (tokens) => {
  session.begin(tokens);
  void showSignedIn();
});
const accountBar = new AccountBar(() => void logout());

async function showSignedIn(): Promise<void> {
  try {
    const { user } = await account.me({});
    if (user === undefined) {
      throw new Error("The server did not say who is signed in.");
    }
    signIn.hide();
    accountBar.show(user.email);
    workspace.hidden = false;
    uploads.open(new PendingUploads(localStorage, user.id));
    await files.reload();
  } catch (err) {
    status.showFailure("Could not load your account", err);
  }
}

function showSignedOut(): void {
  uploads.close();
  files.clear();
  workspace.hidden = true;
  accountBar.hide();
  signIn.show();
}

async function logout(): Promise<void> {
  showSignedOut();
  try {
    await session.logout();
    status.showInfo("You are logged out.");
  } catch (err) {
    status.showFailure("Logged out on this device, but the server could not be told", err);
  }
}

if (session.resume()) {
  void showSignedIn();
} else {
  showSignedOut();
}
