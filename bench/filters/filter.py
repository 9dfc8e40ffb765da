"""The benchmark filter with pymilter (Debian's python3-milter): every
callback defined and answering CONTINUE, one header added at end of message.
With rcpt-wait=<ms>, envrcpt first sleeps that long (time.sleep, which lets go
of the GIL), as a filter waiting for I/O does. With noreply, header and body
are decorated with @Milter.noreply: pymilter's negotiate then keeps the MTA's
offer of NR_HDR and NR_BODY, and the two answer NOREPLY. With readme, it is
instead the README's quick-start filter: only envrcpt (a recipient containing
"spam" rejected with 550 5.7.1) and eom (adds "X-Stamped: yes, queue id <i>");
pymilter's negotiate asks the MTA to skip the stages it has no method for.

    /usr/bin/python3 filter.py <unix:/path | inet:port@host> [rcpt-wait=<ms>] [noreply | readme]
"""

import sys
import time

import Milter
import milter


RCPT_WAIT = 0.0  # seconds
NOREPLY = False
README = False
for option in sys.argv[2:]:
    if option == "noreply":
        NOREPLY = True
    elif option == "readme":
        README = True
    elif option.startswith("rcpt-wait="):
        RCPT_WAIT = int(option[len("rcpt-wait="):]) / 1000
    else:
        sys.exit(f"filter.py: unknown option {option}")


class BenchMilter(Milter.Base):
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def hello(self, hostname):
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        if RCPT_WAIT > 0:
            time.sleep(RCPT_WAIT)
        return Milter.CONTINUE

    def data(self):
        return Milter.CONTINUE

    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Bench", "yes")
        return Milter.CONTINUE

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE

    def unknown(self, command):
        return Milter.CONTINUE


class NoReplyBenchMilter(BenchMilter):
    """BenchMilter asking for no reply to headers and body chunks (NR_HDR, NR_BODY)."""

    @Milter.noreply
    def header(self, name, value):
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        return Milter.CONTINUE


class ReadmeMilter(Milter.Base):
    """The README's quick-start filter: envrcpt and eom only."""

    def envrcpt(self, to, *params):
        if "spam" in to:
            self.setreply("550", "5.7.1", "no such user here")
            return Milter.REJECT
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Stamped", f"yes, queue id {self.getsymval('i')}")
        return Milter.CONTINUE


if README and (NOREPLY or RCPT_WAIT > 0):
    sys.exit("filter.py: readme combines with no other option")
Milter.factory = ReadmeMilter if README else NoReplyBenchMilter if NOREPLY else BenchMilter
Milter.set_flags(Milter.ADDHDRS)
milter.setbacklog(1024)
Milter.runmilter("bench-pymilter", sys.argv[1], timeout=240)
