/**
 * What {@linkcode register} kept of the filter: one per process, read by
 * every callback call.
 *
 * @module
 */

import type { Ctx } from "./ctx.ts";
import type { CallbackName } from "./stages.ts";

/** A filter callback as register read it. */
// deno-lint-ignore no-explicit-any
export type Callback = (this: unknown, ctx: Ctx, ...args: any[]) => unknown;

/** What {@linkcode register} keeps of the filter. */
export interface Registration {
  /** The object given to register: the `this` of its callbacks. */
  readonly self: object;
  readonly name: string;
  /** The filter's flags as libmilter's mask. */
  readonly flags: number;
  /** The callbacks the filter has, read once at registration. */
  readonly callbacks: Readonly<Partial<Record<CallbackName, Callback>>>;
  /** The NO* steps of the stages the filter has no callback for. */
  readonly absentSteps: number;
  /** Whether libmilter calls negotiate (see {@linkcode wanted}): every connection then starts there. */
  readonly negotiates: boolean;
  /**
   * Whether the shim answers negotiate without a round trip to JS (the
   * filter has no negotiate callback of its own; see `Relay.negotiateItself`):
   * JS then sees a connection first at its first callback with a handler,
   * and the shim refuses new connections while draining.
   */
  readonly negotiatedByShim: boolean;
}

let registration: Registration | null = null;

/** The registered filter, for a callback call (libmilter calls none before registration). */
export function registered(): Registration {
  return registration!;
}

/** Keeps the registered filter, once. */
export function setRegistered(r: Registration): void {
  registration = r;
}

/** Whether a filter is registered. */
export function isRegistered(): boolean {
  return registration !== null;
}
