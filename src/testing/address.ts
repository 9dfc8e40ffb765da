/**
 * The addresses of an RFC 5322 address list (`From:`, `To:`, `Cc:`), as an
 * SMTP envelope writes them: RFC 5322 section 3.4 with the obsolete forms of
 * section 4.4 (routes, empty list elements, CFWS around dots) and RFC 6532's
 * UTF-8. A value that is not an address list is an error, never a guess.
 *
 * @module
 */

/** One lexical token of a header value; comments and folding white space are dropped. */
interface Token {
  /** `atom`, `quoted` (a quoted-string, quotes kept), `literal` (a domain-literal, brackets kept), or a special. */
  readonly kind: "atom" | "quoted" | "literal" | "special";
  readonly text: string;
}

/** atext (RFC 5322 3.2.3), and any non-ASCII character (RFC 6532). */
const ATEXT = /[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10FFFF}]/u;
const SPECIALS = '()<>[]:;@\\,."';

/**
 * Reads from `at` (an opening `open`) to the matching `close`, skipping quoted pairs;
 * returns the index after it.
 *
 * @throws {Error} when it is not closed.
 */
function enclosed(value: string, at: number, open: string, close: string, nests: boolean): number {
  let depth = 0;
  for (let i = at; i < value.length; i++) {
    const c = value[i];
    if (c === "\\") i++;
    else if (c === open && (nests || i === at)) depth++;
    else if (c === close && --depth === 0) return i + 1;
    else if (c === open && i !== at && !nests) throw new Error(`${JSON.stringify(open)} inside ${open}…${close}`);
  }
  throw new Error(`${open} at character ${at + 1} is not closed`);
}

/**
 * The tokens of `value`.
 *
 * @throws {Error} for an unclosed comment, quoted-string or domain-literal, or a character no token holds.
 */
function tokenize(value: string): Token[] {
  const tokens: Token[] = [];
  for (let i = 0; i < value.length;) {
    const c = value[i];
    if (c === " " || c === "\t" || c === "\r" || c === "\n") i++;
    else if (c === "(") i = enclosed(value, i, "(", ")", true);
    else if (c === '"' || c === "[") {
      const end = c === '"' ? enclosed(value, i, '"', '"', false) : enclosed(value, i, "[", "]", false);
      tokens.push({ kind: c === '"' ? "quoted" : "literal", text: value.slice(i, end) });
      i = end;
    } else if (SPECIALS.includes(c)) {
      tokens.push({ kind: "special", text: c });
      i++;
    } else {
      let end = i;
      while (end < value.length && ATEXT.test(String.fromCodePoint(value.codePointAt(end)!))) {
        end += value.codePointAt(end)! > 0xffff ? 2 : 1;
      }
      if (end === i) throw new Error(`${JSON.stringify(c)} at character ${i + 1} cannot stand in an address list`);
      tokens.push({ kind: "atom", text: value.slice(i, end) });
      i = end;
    }
  }
  return tokens;
}

/** A recursive-descent reader of one token list; each method returns null (position unchanged) when its form is not there. */
class Reader {
  #at = 0;
  constructor(readonly tokens: readonly Token[]) {}

  get done(): boolean {
    return this.#at >= this.tokens.length;
  }

  /** The next token when it is the special `text`, consumed. */
  special(text: string): boolean {
    const token = this.tokens[this.#at];
    if (token?.kind !== "special" || token.text !== text) return false;
    this.#at++;
    return true;
  }

  /** Runs `read`; on null, puts the position back. */
  attempt<T>(read: () => T | null): T | null {
    const start = this.#at;
    const result = read();
    if (result === null) this.#at = start;
    return result;
  }

  /** An atom, or (with `quoted`) a quoted-string: a word. */
  word(quoted: boolean): string | null {
    const token = this.tokens[this.#at];
    if (token?.kind !== "atom" && !(quoted && token?.kind === "quoted")) return null;
    this.#at++;
    return token.text;
  }

  /** `word *("." word)`: a local-part (words may be quoted) or a dot-atom domain (atoms only). */
  dotted(quoted: boolean): string | null {
    return this.attempt(() => {
      const words = [this.word(quoted)];
      while (words[0] !== null && this.special(".")) words.push(this.word(quoted));
      return words.includes(null) ? null : words.join(".");
    });
  }

  /** addr-spec: `local-part "@" domain`. */
  addrSpec(): string | null {
    return this.attempt(() => {
      const local = this.dotted(true);
      if (local === null || !this.special("@")) return null;
      const domain = this.dotted(false) ?? this.literal();
      return domain === null ? null : `${local}@${domain}`;
    });
  }

  /** A domain-literal. */
  literal(): string | null {
    const token = this.tokens[this.#at];
    if (token?.kind !== "literal") return null;
    this.#at++;
    return token.text;
  }

  /** A display name: one or more words (obs-phrase: dots after the first). */
  phrase(): boolean {
    if (this.word(true) === null) return false;
    while (this.word(true) !== null || this.special("."));
    return true;
  }

  /** obs-route before the addr-spec of an angle-addr: `@domain *("," ["@" domain]) ":"`. */
  route(): void {
    this.attempt(() => {
      while (this.special(","));
      if (!this.special("@") || (this.dotted(false) ?? this.literal()) === null) return null;
      while (this.special(",")) if (this.special("@") && (this.dotted(false) ?? this.literal()) === null) return null;
      return this.special(":") ? true : null;
    });
  }

  /** mailbox: `[phrase] "<" [route] addr-spec ">"`, or a bare addr-spec. */
  mailbox(): string | null {
    const angled = this.attempt(() => {
      this.phrase();
      if (!this.special("<")) return null;
      this.route();
      const address = this.addrSpec();
      return address !== null && this.special(">") ? address : null;
    });
    return angled ?? this.addrSpec();
  }

  /** group: `phrase ":" [mailbox *("," [mailbox])] ";"`; its addresses. */
  group(): string[] | null {
    return this.attempt(() => {
      if (!this.phrase() || !this.special(":")) return null;
      const list = this.list(";");
      return list !== null && this.special(";") ? list : null;
    });
  }

  /** Mailboxes (and, outside a group, groups) separated by commas, empty elements allowed, up to `end` or the end. */
  list(end: string | null): string[] | null {
    const out: string[] = [];
    for (;;) {
      const group = end === null ? this.group() : null;
      if (group) { for (const address of group) out.push(address); }
      else {
        const mailbox = this.mailbox();
        if (mailbox !== null) out.push(mailbox);
      }
      if (!this.special(",")) break;
    }
    return end === null && !this.done ? null : out;
  }
}

/**
 * The addresses of an address-list header value, each as an SMTP envelope
 * writes it: `<local@domain>`, the local part quoted where the header quotes
 * it (`<"a b"@example.org>`), comments, display names and folding white
 * space dropped; the members of a group, not its name. An empty group
 * (`undisclosed-recipients:;`) gives none.
 *
 * @throws {Error} when `value` is not an RFC 5322 address list, saying where.
 */
export function parseAddressList(value: string): string[] {
  let tokens: Token[];
  try {
    tokens = tokenize(value);
  } catch (error) {
    throw new Error(`not an RFC 5322 address list: ${(error as Error).message}`);
  }
  const list = new Reader(tokens).list(null);
  if (list === null) throw new Error("not an RFC 5322 address list");
  return list.map((address) => `<${address}>`);
}
