import { defineConfig } from "vitest/config";

/**
 * The suite's core, also run as on a platform without a prebuilt shim
 * (test/helpers/filter.ts points MILTER_SHIM_PATH at a missing file): the
 * binding then registers its callbacks with libmilter directly.
 */
const CORE = [
  "test/callbacks.test.ts",
  "test/actions.test.ts",
  "test/stat.test.ts",
  "test/noreply.test.ts",
  "test/policy.test.ts",
  "test/sizes.test.ts",
  "test/round-trips.test.ts",
];

const common = {
  testTimeout: 60_000,
  hookTimeout: 60_000,
  pool: "forks" as const,
};

export default defineConfig({
  test: {
    // Filters run in child processes; a few test files at a time keep the 2-core CI machine responsive.
    maxWorkers: 3,
    projects: [
      { test: { ...common, name: "shim", include: ["test/**/*.test.ts"] } },
      { test: { ...common, name: "no-shim", include: CORE, env: { MILTER_TEST_NO_SHIM: "1" } } },
    ],
  },
});
