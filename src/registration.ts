/**
 * What {@linkcode register} and `replace` kept of the filter: the current
 * one, which connections that start now use, and those it replaced, kept
 * while connections that started with them run.
 *
 * @module
 */

import type { Ctx } from "./ctx.ts";
import type { CallbackName } from "./stages.ts";

/** A filter callback as register read it. */
// deno-lint-ignore no-explicit-any
export type Callback = (this: unknown, ctx: Ctx, ...args: any[]) => unknown;

/** What {@linkcode register} (or `replace`) keeps of a filter. */
export interface Registration {
  /** Its generation: 1 for the registered filter, one more for each `replace`; every call of a connection carries it. */
  readonly id: number;
  /** The object given to register: the `this` of its callbacks. */
  readonly self: object;
  readonly name: string;
  /** The filter's flags as libmilter's mask. */
  readonly flags: number;
  /** The callbacks the filter has, read once at registration. */
  readonly callbacks: Readonly<Partial<Record<CallbackName, Callback>>>;
  /** The NO* steps of the stages the filter has no callback for. */
  readonly absentSteps: number;
  /**
   * Whether the shim answers negotiate without a round trip to JS (the
   * filter has no negotiate callback of its own; see `Relay.negotiateItself`):
   * JS then sees a connection first at its first callback with a handler,
   * and the shim refuses new connections while draining.
   */
  readonly negotiatedByShim: boolean;
}

let current: Registration | null = null;

/** Filters replaced while connections that started with them may still run, by id. */
const retired = new Map<number, Registration>();

/** The current filter: the one connections starting now use (libmilter calls nothing before registration). */
export function registered(): Registration {
  return current!;
}

/** Installs `r` as the current filter; the one it replaces is kept until {@linkcode sweep} finds it unused. */
export function setRegistered(r: Registration): void {
  if (current !== null) retired.set(current.id, current);
  current = r;
}

/** Whether a filter is registered. */
export function isRegistered(): boolean {
  return current !== null;
}

/** The filter of generation `id`: the current one for 0 (a connection without one) or an id no longer kept. */
export function registrationOf(id: number): Registration {
  return id === 0 || id === current!.id ? current! : retired.get(id) ?? current!;
}

/** Forgets the replaced filters that `inUse` says nothing uses any more. */
export function sweep(inUse: (r: Registration) => boolean): void {
  for (const [id, r] of retired) if (!inUse(r)) retired.delete(id);
}

/** @internal How many replaced filters are still kept: for tests. */
export function retiredCount(): number {
  return retired.size;
}
