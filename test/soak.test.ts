/**
 * The short soak CI runs (scripts/soak.ts runs the long one): thousands of
 * connections × several messages through one filter process, with every
 * message answered and resident memory flat (no leak of contexts, private
 * data, koffi registrations or buffers).
 */

import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect, test } from "vitest";
import { command, ROOT } from "./helpers/runtimes.ts";

test("6,000 connections × 3 messages: all answered, no leak, memory within 10% of after the first tenth", async () => {
  const [cmd, args] = command("node", join(ROOT, "scripts/soak.ts"));
  const { stdout } = await promisify(execFile)(cmd, [...args, "6000", "3", "32"], { cwd: ROOT, timeout: 120_000 })
    .catch((error) => error as { stdout: string });
  const verdict = JSON.parse(stdout.trim().split("\n").at(-1)!);
  expect(verdict).toMatchObject({ connections: 6000, messages: 18000, failures: 0, withinTenPercent: true });
  // The leak detector that does not depend on the allocator: the JS heap after a full GC.
  // Keeping as little as 200 bytes per connection would add more than 1 MiB here.
  expect(verdict.heapAfterGcGrowthMiB).toBeLessThan(1);
});
