/**
 * Per-connection rate limiting with private data: each SMTP connection may
 * send at most MAX_MESSAGES messages, each to at most MAX_RECIPIENTS
 * recipients. Past that, the client is told to try again later (4xx), which
 * well-behaved senders do on a new connection. The counters live in the
 * connection's private data (setpriv/getpriv) and go away with it.
 *
 *   MAX_MESSAGES=10 MAX_RECIPIENTS=50 npx tsx examples/ratelimit.ts
 *
 * Both limits are whole numbers of at least 1: anything else (`5O`, `1e3`,
 * `-1`) stops the filter at start with a message naming the variable (exit
 * code 78), rather than turning into a limit nothing reaches.
 *
 * MILTER_SOCKET sets the socket (default inet:8890@127.0.0.1). Postfix, in
 * main.cf:
 *
 *   smtpd_milters = inet:127.0.0.1:8890
 *   milter_default_action = tempfail
 */

import process from "node:process";
import * as Milter from "../mod.ts";
import { positiveInteger } from "./settings.ts";

const MAX_MESSAGES = positiveInteger("MAX_MESSAGES", 10);
const MAX_RECIPIENTS = positiveInteger("MAX_RECIPIENTS", 50);

/** The counters of one connection. */
interface Counters {
  messages: number;
  recipients: number;
}

Milter.register({
  ...Milter.empty,
  name: "ratelimit",
  connect: (ctx) => {
    Milter.setpriv<Counters>(ctx, { messages: 0, recipients: 0 });
    return Milter.Stat.Continue;
  },
  envfrom: (ctx) => {
    const counters = Milter.getpriv<Counters>(ctx)!;
    counters.recipients = 0;
    if (++counters.messages > MAX_MESSAGES) {
      Milter.setreply(ctx, "451", "4.7.1", `at most ${MAX_MESSAGES} messages per connection; reconnect and retry`);
      return Milter.Stat.Tempfail;
    }
    return Milter.Stat.Continue;
  },
  envrcpt: (ctx) => {
    const counters = Milter.getpriv<Counters>(ctx)!;
    if (++counters.recipients > MAX_RECIPIENTS) {
      // 452: the client delivers to the remaining recipients in a later transaction.
      Milter.setreply(ctx, "452", "4.5.3", `at most ${MAX_RECIPIENTS} recipients per message`);
      return Milter.Stat.Tempfail;
    }
    return Milter.Stat.Continue;
  },
});
Milter.setconn(process.env.MILTER_SOCKET ?? "inet:8890@127.0.0.1");
await Milter.main();
