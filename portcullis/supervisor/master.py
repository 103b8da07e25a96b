"""Start the proxy: bind the listeners, then serve them.

With `workers: 1` the master serves in its own event loop; more workers come with the
process supervisor.
"""

from __future__ import annotations

import logging
import sys

import uvloop

from portcullis.config.schema import Config
from portcullis.supervisor.sockets import BindError, bind_listener
from portcullis.worker.serve import Worker

log = logging.getLogger("portcullis")

DRAIN_TIMEOUT = 30.0


async def _serve(config: Config) -> int:
    try:
        sockets = {lst.name: bind_listener(lst.listen) for lst in config.listeners}
    except BindError as exc:
        print(f"portcullis: {exc}", file=sys.stderr)
        return 1
    demo = None
    if config.demo:
        from portcullis.demo.upstream import start_demo_upstream

        demo = await start_demo_upstream()
    worker = Worker(config, sockets)
    await worker.start()
    worker.install_signals()
    for lst in config.listeners:
        log.info("listening on %s (%s)", lst.listen, lst.name)
    await worker.stopping.wait()
    await worker.drain(DRAIN_TIMEOUT)
    if demo is not None:
        demo.close()
    return 0


def run(config: Config, path: str | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    return uvloop.run(_serve(config))
