/**
 * A fake milter: a node:net server on a unix socket that speaks just enough
 * of the milter side of the protocol for a test to script what libmilter
 * never would, or to record what an MTA sends.
 */

import { chmodSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { concat, encodeFrame, type Frame, splitFrames, u32 } from "../../src/testing/protocol.ts";

/** Sends one frame from the fake milter. */
export type Send = (code: string, data?: Uint8Array | string) => void;
/** What the fake milter does on one command from the client. */
export type Behaviour = (send: Send, socket: Socket, frame: Frame) => void;

/** A command's usual answer: continue, accept at end of message, nothing for macros, abort and quit. */
export function usual(code: string, send: Send, socket: Socket): void {
  if (code === "Q") socket.end();
  else if (!["D", "A"].includes(code)) send(code === "E" ? "a" : "c");
}

const servers = new Set<Server>();
const sockets = new Set<Socket>();

/**
 * Starts a fake milter on the unix socket `path` (mode 0666, so that an MTA
 * running as another user connects too). It negotiates protocol 6 with
 * every action and no step left out (unless `on.O` answers), then behaves as `on` says per command
 * letter, else as {@linkcode usual}. Returns its socket spec.
 */
export async function fakeMilter(path: string, on: Partial<Record<string, Behaviour>>): Promise<string> {
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    let buffer: Uint8Array = new Uint8Array(0);
    const send: Send = (code, data = new Uint8Array(0)) => {
      if (!socket.destroyed) {
        socket.write(encodeFrame(code, typeof data === "string" ? new TextEncoder().encode(data) : data));
      }
    };
    socket.on("data", (chunk: Uint8Array) => {
      const [frames, rest] = splitFrames(concat([buffer, chunk]));
      buffer = rest;
      for (const frame of frames) {
        if (frame.code === "O" && !on.O) send("O", concat([u32(6), u32(0x1ff), u32(0)]));
        else (on[frame.code] ?? ((s, sock) => usual(frame.code, s, sock)))(send, socket, frame);
      }
    });
  });
  servers.add(server);
  await new Promise<void>((resolve) => server.listen(path, resolve));
  chmodSync(path, 0o666);
  return `unix:${path}`;
}

/** Closes every fake milter and its connections (for afterEach). */
export async function closeFakeMilters(): Promise<void> {
  for (const socket of sockets) socket.destroy();
  sockets.clear();
  await Promise.all([...servers].map((s) => new Promise((resolve) => s.close(resolve))));
  servers.clear();
}
