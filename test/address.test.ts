/**
 * milter-test's RFC 5322 address-list parser (src/testing/address.ts): the
 * forms the hostile review found mishandled, the obsolete syntax, and a
 * corpus read by `email-addresses` (an RFC 5322 parser from npm, a dev
 * dependency here) too: the two must agree on what is an address list and
 * on its addresses.
 */

import emailAddresses from "email-addresses";
import { describe, expect, test } from "vitest";
import { parseAddressList } from "../src/testing/address.ts";

describe("what the hostile review found", () => {
  test("a quoted local part that holds an @ is kept, quoted", () => {
    expect(parseAddressList('"quoted@local"@q.example')).toEqual(['<"quoted@local"@q.example>']);
    expect(parseAddressList('Q <"a b"@q.example>')).toEqual(['<"a b"@q.example>']);
  });

  test("a group gives its members, without the ; that closes it", () => {
    expect(parseAddressList("Team: a@x.org, B <b@y.org>;")).toEqual(["<a@x.org>", "<b@y.org>"]);
    expect(parseAddressList("undisclosed-recipients:;")).toEqual([]);
  });

  test.each(["bad@@x", "@", "a@", "@b", "a@b c@d", "a@b;", "G: a@b", "<a@b", '"unclosed@x', "(unclosed a@b", "a..b@c"])(
    "%j is not an address list",
    (value) => {
      expect(() => parseAddressList(value)).toThrow(/not an RFC 5322 address list/);
    },
  );
});

describe("the rest of RFC 5322's address syntax", () => {
  test.each([
    ['"Doe, John" <j@example.org>, b@example.net (Bob)', ["<j@example.org>", "<b@example.net>"]],
    ["John Q. Public <jqp@x.org>", ["<jqp@x.org>"]],
    ["x@y (comment (nested) \\) ) ", ["<x@y>"]],
    ["a (c) . b @ ex (d). org", ["<a.b@ex.org>"]],
    ["<@r1.example,@r2.example:u@d.example>", ["<u@d.example>"]],
    ["a@[192.0.2.1], b@[IPv6:2001:db8::1]", ["<a@[192.0.2.1]>", "<b@[IPv6:2001:db8::1]>"]],
    [", , a@b ,", ["<a@b>"]],
    ["Ünï <ü@exämple.org>", ["<ü@exämple.org>"]],
    ['"a\\"b"@x', ['<"a\\"b"@x>']],
    ["Alice\r\n <alice@example.org>", ["<alice@example.org>"]],
    ["", []],
  ])("%j", (value, expected) => {
    expect(parseAddressList(value)).toEqual(expected);
  });
});

describe("the same reading as email-addresses", () => {
  const CORPUS = [
    "alice@example.org",
    "Alice <alice@example.org>, bob@example.net",
    '"quoted@local"@q.example',
    '"a b"@example.org, c@d.example',
    'Team: a@x.org, "B b" <b@y.org>;, c@z.example',
    "undisclosed-recipients:;",
    "a (comment) @ example.org",
    "<@r1,@r2:u@d.example>",
    "a@[192.0.2.1]",
    "Ünï <ü@exämple.org>",
    "bad@@x",
    "@",
    "a@b c@d",
    "a@b;",
    "G: a@b",
    "a..b@c",
    "a@b.",
    ".a@b",
    "<a@b",
    '"unclosed@x',
    "(unclosed a@b",
  ]; // not ", , a@b": obs-addr-list (RFC 5322 4.4), which email-addresses does not take

  /** email-addresses' addresses of `value` (quotes of a local part dropped), or null when it is no list. */
  function theirs(value: string): string[] | null {
    const list = emailAddresses.parseAddressList({ input: value, rfc6532: true });
    if (list === null) return null;
    return list.flatMap((a) => a.type === "group" ? a.addresses.map((m) => m.address) : [a.address])
      .map((address) => address ?? "");
  }

  /** Ours, the same way. */
  function ours(value: string): string[] | null {
    try {
      return parseAddressList(value).map((a) => a.slice(1, -1).replace(/^"(.*)"@/s, "$1@").replace(/\\(.)/g, "$1"));
    } catch {
      return null;
    }
  }

  test.each(CORPUS)("%j", (value) => {
    expect(ours(value)).toEqual(theirs(value));
  });
});
