"""What the tests share, in one place (test modules never import each other):

* `tests.support.component`: the component tier's inputs, and a harness that runs the
  real `Runner` and `Engine` on the in-memory fakes the package ships
  (`harvest_async.testing`) and a `FakeClock`;
* `tests.support.live`: the integration tier's helpers for a real server: input builders,
  writes the way producers make them, waits, readers of the proposals and the audit
  stream, settings, and the service run in-process (`running`).
"""
