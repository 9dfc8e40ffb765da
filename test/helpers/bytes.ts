/** Builds the bytes of a `struct sockaddr` of `family`, as libmilter would hand them to a callback. */

import { sockaddrLength } from "../../src/convert.ts";

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function sockaddrBytes(
  family: number,
  fill: (bytes: Uint8Array) => void,
  size = sockaddrLength(family),
): Uint8Array {
  const bytes = new Uint8Array(size);
  new DataView(bytes.buffer).setUint16(0, family, LITTLE_ENDIAN);
  fill(bytes);
  return bytes;
}
