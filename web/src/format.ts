/** How numbers and dates read on the page: in the reader's locale, decimal units as browsers use. */

const BYTE_UNITS = ["byte", "kilobyte", "megabyte", "gigabyte", "terabyte"] as const;

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < BYTE_UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  // The short form of "byte" is "byte" in English ("512 byte"); the long one reads right.
  return unitFormat(BYTE_UNITS[unit] ?? "byte", unit === 0 ? "long" : "short").format(value);
}

export function formatSpeed(bytesPerSecond: number): string {
  return unitFormat("megabyte-per-second", "short").format(bytesPerSecond / 1e6);
}

/** Whole percent, rounded down: "100%" only once every byte is there. */
export function formatPercent(fraction: number): string {
  return `${Math.floor(fraction * 100)}%`;
}

export function formatDate(date: Date): string {
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function unitFormat(unit: string, unitDisplay: "short" | "long"): Intl.NumberFormat {
  return new Intl.NumberFormat(undefined, {
    style: "unit",
    unit,
    unitDisplay,
    maximumFractionDigits: 1,
  });
}
