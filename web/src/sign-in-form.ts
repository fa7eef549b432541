/**
 * The form for signed-out visitors: Register creates an account, Log in starts a session.
 * Both buttons submit the same form, so the browser checks the fields for either.
 */
import type { AuthClient } from "./api";
import { byId } from "./dom";
import type { TokenPair } from "./gen/auth/v1/auth_pb";
import type { StatusLine } from "./status-line";

export class SignInForm {
  readonly #section = byId("sign-in", HTMLElement);
  readonly #form = byId("sign-in-form", HTMLFormElement);
  readonly #email = byId("email", HTMLInputElement);
  readonly #password = byId("password", HTMLInputElement);
  readonly #auth: AuthClient;
  readonly #status: StatusLine;
  readonly #onSignedIn: (tokens: TokenPair) => void;

  constructor(auth: AuthClient, status: StatusLine, onSignedIn: (tokens: TokenPair) => void) {
    this.#auth = auth;
    this.#status = status;
    this.#onSignedIn = onSignedIn;
    this.#form.addEventListener("submit", (event) => {
      event.preventDefault();
      const register = event.submitter?.id === "register";
      void this.#whileBusy(() => (register ? this.#register() : this.#login()));
    });
  }

  show(): void {
    this.#section.hidden = false;
  }

  hide(): void {
    this.#section.hidden = true;
  }

  async #register(): Promise<void> {
    try {
      const { user } = await this.#auth.register(this.#credentials());
      this.#status.showInfo(`Account created for ${user?.email ?? this.#email.value}. Log in to continue.`);
    } catch (err) {
      this.#status.showFailure("Could not create the account", err);
    }
  }

  async #login(): Promise<void> {
    try {
      const { tokens } = await this.#auth.login(this.#credentials());
      if (tokens === undefined) {
        throw new Error("The server answered the login without tokens.");
      }
      this.#password.value = "";
      this.#status.clear();
      this.#onSignedIn(tokens);
    } catch (err) {
      this.#status.showFailure("Could not log in", err);
    }
  }

  #credentials(): { email: string; password: string } {
    return { email: this.#email.value, password: this.#password.value };
  }

  // A second submit while one is under way would only race the first.
  async #whileBusy(action: () => Promise<void>): Promise<void> {
    if (this.#form.ariaBusy === "true") {
      return;
    }
    this.#form.ariaBusy = "true";
    try {
      await action();
    } finally {
      this.#form.ariaBusy = "false";
    }
  }
}
