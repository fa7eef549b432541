// Builds dist/: the page's TypeScript bundled and minified into one app.js, next to the static
// index.html and app.css. The gateway embeds dist/ as committed, so the build must be
// deterministic: the same sources give byte-identical files (no timestamps, no source maps,
// no absolute paths), and the test command rebuilds it and fails on any difference.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const web = fileURLToPath(new URL(".", import.meta.url));
const dist = `${web}dist/`;

await rm(dist, { recursive: true, force: true });
await mkdir(dist);
await build({
  absWorkingDir: web,
  entryPoints: ["src/main.ts"],
  outfile: "dist/app.js",
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  charset: "utf8",
  logLevel: "warning",
});
await Promise.all(["index.html", "app.css"].map((name) => copyFile(`${web}${name}`, `${dist}${name}`)));
