/**
 * The page's one aria-live region. Outcomes and errors land here, so screen readers announce
 * them, and errors always read as a sentence with what was being done.
 */
import { describeError, isSessionEnded } from "./errors";

export class StatusLine {
  readonly #region: HTMLElement;

  constructor(region: HTMLElement) {
    this.#region = region;
  }

  showInfo(text: string): void {
    this.#show(text, "info");
  }

  showError(text: string): void {
    this.#show(text, "error");
  }

  /** Reports a failed action, e.g. `showFailure("Could not delete a.txt", err)`. */
  showFailure(action: string, err: unknown): void {
    if (isSessionEnded(err)) {
      return; // The session has announced its own end; this failure is only its echo.
    }
    this.#show(`${action}: ${describeError(err)}`, "error");
  }

  clear(): void {
    this.#show("", "info");
  }

  #show(text: string, kind: "info" | "error"): void {
    this.#region.dataset["kind"] = kind;
    this.#region.textContent = text;
  }
}
