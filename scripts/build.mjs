// Builds dist/ for plain `node`: tsc emits JavaScript with relative imports
// rewritten to .js, but leaves .ts in the declaration files
// (microsoft/TypeScript#61037); rewrite those too. Then the native shim's
// prebuilt objects (and its source, for platforms without one) go beside
// dist/ffi/shim.js, which finds them relative to itself.
import { execFileSync } from "node:child_process";
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

rmSync("dist", { recursive: true, force: true });
execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });

for (const name of readdirSync("dist", { recursive: true, encoding: "utf8" })) {
  const file = join("dist", name);
  if (!file.endsWith(".d.ts")) continue;
  const text = readFileSync(file, "utf8");
  const fixed = text.replace(/(from\s+|import\()(["'])(\.{1,2}\/[^"']+)\.ts\2/g, "$1$2$3.js$2");
  if (fixed !== text) writeFileSync(file, fixed);
}

cpSync("ffi/shim/prebuilt", "dist/ffi/shim/prebuilt", { recursive: true });
cpSync("ffi/shim/milter_shim.c", "dist/ffi/shim/milter_shim.c");
