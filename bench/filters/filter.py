"""The benchmark filter with pymilter (Debian's python3-milter): every
callback defined and answering CONTINUE, one header added at end of message.
With rcpt-wait=<ms>, envrcpt first sleeps that long (time.sleep, which lets go
of the GIL), as a filter waiting for I/O does.

    /usr/bin/python3 filter.py <unix:/path | inet:port@host> [rcpt-wait=<ms>]
"""

import sys
import time

import Milter
import milter


RCPT_WAIT = 0.0  # seconds
for option in sys.argv[2:]:
    if not option.startswith("rcpt-wait="):
        sys.exit(f"filter.py: unknown option {option}")
    RCPT_WAIT = int(option[len("rcpt-wait="):]) / 1000


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


Milter.factory = BenchMilter
Milter.set_flags(Milter.ADDHDRS)
milter.setbacklog(1024)
Milter.runmilter("bench-pymilter", sys.argv[1], timeout=240)
