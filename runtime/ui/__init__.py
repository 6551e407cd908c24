"""herder.runtime.ui — ``herder ui``, a local web console over a store.

It reads the store read-only (so it runs beside a daemon, in another process: never
in the process of a Runtime that has the store open) and sends
operator actions through the same command channel as the CLI. Plain standard library:
``http.server`` serves hand-written HTML, CSS and a little vanilla JavaScript shipped as
package data, with no build step.

- :mod:`._server` — HTTP and routing; :mod:`._sockets` — its connections (slots and
  deadlines); :mod:`._guard` — who it answers and who may act
  (Host and Origin checks, the token's cookie and CSRF field); :mod:`._gate` — the gate
  that shares the read-only store between request threads.
- :mod:`._views` — what each address shows, read through the CLI's read-only views.
- :mod:`._pages` — the HTML (every store value escaped); :mod:`._workflow_page` —
  one workflow, its history a window at a time; :mod:`._timeline` — the SVG timeline of
  one workflow; :mod:`._query` — paging newest update first over the
  ``recent`` index, bounded per request; :mod:`._counters` — the live counters, counted
  in the background.
"""

from herder.runtime.ui._server import Console

__all__ = ["Console"]
