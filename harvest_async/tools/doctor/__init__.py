"""`harvest-async doctor`: named health checks, each PASS/WARN/FAIL with one line saying what
was found and, when not PASS, one line saying what to do.

Checks, in order (`redis` always runs first; when it fails nothing else can run):

* ``redis``          reachable and authenticated as the service authenticates (PING),
                     server flavour and version;
* ``notifications``  `notify-keyspace-events` covers K, h, g and x;
* ``inputs``         per symbol: market state, risk proposal and position present and fresh
                     (the same validation the service applies, so "fresh" means "the service
                     would advise on it");
* ``publisher``      a publisher is alive (its liveness key exists);
* ``proposals``      every proposal hash carries the contract's fields and is recent;
* ``stream``         the audit stream's length and the age of its last entry.

Exit status (`Report.exit_code`): 0 nothing failed, 1 a check failed, 3 Redis unreachable.

Modules: `report` (the result and its text), `run` (the order and the errors),
`connection` (redis, notifications), `inputs`, `outputs` (publisher, proposals, stream).
"""

from harvest_async.tools.doctor.report import CHECK_NAMES, Check, Report, render_text
from harvest_async.tools.doctor.run import run_doctor

__all__ = ["CHECK_NAMES", "Check", "Report", "render_text", "run_doctor"]
