/**
 * One upload on the page: name, progress bar, percent, speed, and Cancel (Dismiss once over).
 * `data-state` says where it is (starting, uploading, finishing, done, failed, cancelled), for
 * styling and for tests.
 */
import { element } from "./dom";
import { formatPercent, formatSpeed } from "./format";

type FinalState = "done" | "failed" | "cancelled";

export class UploadRow {
  readonly element: HTMLLIElement;
  readonly #size: number;
  readonly #progress: HTMLProgressElement;
  readonly #percent = element("span", { class: "percent", "data-testid": "progress-percent" });
  readonly #speed = element("span", { class: "speed", "data-testid": "speed" });
  readonly #message = element("p", { class: "message", "data-testid": "upload-message" }, "Starting…");
  readonly #cancel: HTMLButtonElement;
  readonly #dismiss: HTMLButtonElement;
  /** Where and when this page load started sending, for the speed: not the whole file's. */
  #start: { offset: number; time: number } | undefined;

  constructor(filename: string, size: number, actions: { cancel(): void; dismiss(): void }) {
    this.#size = size;
    this.#progress = element("progress", { max: "1", value: "0", "aria-label": `Upload of ${filename}` });
    this.#cancel = element("button", { type: "button", "data-testid": "cancel", "aria-label": `Cancel the upload of ${filename}` }, "Cancel");
    this.#dismiss = element("button", { type: "button", "data-testid": "dismiss", "aria-label": `Dismiss ${filename}` }, "Dismiss");
    this.#dismiss.hidden = true;
    this.#cancel.addEventListener("click", () => actions.cancel());
    this.#dismiss.addEventListener("click", () => actions.dismiss());
    this.element = element(
      "li",
      { class: "upload-row", "data-testid": "upload-row", "data-state": "starting" },
      element("span", { class: "name", "data-testid": "upload-name" }, filename),
      this.#progress,
      this.#percent,
      this.#speed,
      this.#cancel,
      this.#dismiss,
      this.#message,
    );
  }

  /** The server holds `offset` bytes. */
  showProgress(offset: number): void {
    const now = performance.now();
    this.#start ??= { offset, time: now };
    const fraction = this.#size === 0 ? 1 : offset / this.#size;
    this.#progress.value = fraction;
    this.#percent.textContent = formatPercent(fraction);
    const seconds = (now - this.#start.time) / 1000;
    if (seconds > 0) {
      this.#speed.textContent = formatSpeed((offset - this.#start.offset) / seconds);
    }
    const finishing = offset >= this.#size;
    this.element.dataset["state"] = finishing ? "finishing" : "uploading";
    this.#message.textContent = finishing ? "Finishing…" : "";
  }

  finish(state: FinalState, message: string): void {
    this.element.dataset["state"] = state;
    this.#message.textContent = message;
    this.#speed.textContent = "";
    const hadFocus = document.activeElement === this.#cancel;
    this.#cancel.hidden = true;
    this.#dismiss.hidden = false;
    if (hadFocus) {
      this.#dismiss.focus(); // Keyboard users keep their place instead of landing on <body>.
    }
  }
}
