/** Who is signed in, and the way out. */
import { byId } from "./dom";

export class AccountBar {
  readonly #bar = byId("account", HTMLElement);
  readonly #email = byId("user-email", HTMLElement);

  constructor(onLogout: () => void) {
    byId("logout", HTMLButtonElement).addEventListener("click", onLogout);
  }

  show(email: string): void {
    this.#email.textContent = email;
    this.#bar.hidden = false;
  }

  hide(): void {
    this.#bar.hidden = true;
    this.#email.textContent = "";
  }
}
