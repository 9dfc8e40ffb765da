import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Filters run in child processes; a few test files at a time keep the 2-core CI machine responsive.
    maxWorkers: 3,
  },
});
