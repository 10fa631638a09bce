"""Serving until SIGTERM, then stopping without dropping a request the service had accepted.

A rolling update (Kubernetes) sends SIGTERM and expects the process to finish what it holds and
exit within the pod's grace period. uvicorn's own shutdown stops listening, lets requests in
progress finish within `timeout_graceful_shutdown` (then the app's lifespan ends: the issued-card
writer flushes), but two things in it lose requests:

* An idle keep-alive connection is closed at once. A client that has just sent its next request
  on it (unread, in the socket buffer) gets a reset; under load that is most connections, since
  the next request follows each answer within a millisecond. `DrainingHttpToolsProtocol` keeps
  such a connection open a moment longer, answers a request that arrives with
  `Connection: close`, and closes it after the answer (or after `IDLE_DRAIN_SECONDS` without one).
* With several workers the supervisor holds its own copy of the listening socket until it exits,
  so after the workers stop accepting, the kernel still completes connections that nobody will
  ever answer. `GracefulSupervisor` closes that copy before it signals the workers.

What remains is what no server can prevent: a connection made after the signal may be refused, or
reset if it was queued by the kernel just as the last worker stopped listening. Neither carried a
request the service had read; a load balancer retries both elsewhere.
"""

from __future__ import annotations

from typing import Final

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess

# How long an idle connection stays open after SIGTERM for a request already on its way: a client
# that sends one sends it within milliseconds of its previous answer; a pooled connection that
# carries nothing more should not hold the shutdown up for long.
IDLE_DRAIN_SECONDS: Final = 1.0


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a shutdown that answers a request arriving on an idle
    connection instead of resetting it."""

    _draining = False

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # In progress: answered, then closed (as uvicorn does).
            self.cycle.keep_alive = False
            return
        self._draining = True
        # The keep-alive timer is reused: a request's first bytes cancel it, as they would
        # cancel the keep-alive timeout, and its handler closes a connection that stayed idle.
        self._unset_keepalive_if_required()
        grace = self.config.timeout_graceful_shutdown
        wait = IDLE_DRAIN_SECONDS if grace is None else min(IDLE_DRAIN_SECONDS, grace)
        self.timeout_keep_alive_task = self.loop.call_later(wait, self.timeout_keep_alive_handler)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            # Before the app starts (its task is only scheduled): the answer says
            # `Connection: close`, and uvicorn closes the connection once it is sent.
            self.cycle.keep_alive = False


class GracefulSupervisor(Multiprocess):
    """uvicorn's supervisor of several worker processes, which stops listening before it
    forwards SIGTERM to them (all at once) and waits for them."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def serve(config: uvicorn.Config) -> bool:
    """Serve `config` (one process, or `config.workers` worker processes) until SIGTERM or
    SIGINT has been handled. False when a single-process server did not start."""
    if config.workers > 1:
        GracefulSupervisor(config, sockets=[config.bind_socket()]).run()
        return True
    server = uvicorn.Server(config)
    server.run()
    return server.started
