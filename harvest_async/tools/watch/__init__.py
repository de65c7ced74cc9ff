"""`harvest-async watch`: a live terminal table of every symbol's current proposal.

The table is read from Redis (the proposal hashes are the truth) and updated by keyspace
notifications on the proposal keys: a notification marks the symbol dirty, dirty symbols are
re-read in one pipeline, and a hash that is gone is shown as RETRACTED with the reason taken
from the audit stream's `retract` entry. Without notifications (`notify-keyspace-events`
lacking K/h/g) it re-reads everything every second and says so in the header.

Plain ANSI escape codes (alternate screen, cursor home, erase line): works over ssh and in
tmux without curses. Ctrl-C, SIGTERM or `q` exit cleanly and restore the terminal.
`--once` prints one snapshot (no escape codes unless colour is asked for) for scripts.

Modules: `model` (rows), `render` (the table and the terminal), `watcher` (Redis: notifications,
re-reads, liveness), `live` (the loop and the command).
"""

from harvest_async.tools.watch.live import live, run_watch
from harvest_async.tools.watch.model import WatchModel, use_color
from harvest_async.tools.watch.render import Terminal, render
from harvest_async.tools.watch.watcher import Watcher

__all__ = ["Terminal", "WatchModel", "Watcher", "live", "render", "run_watch", "use_color"]
