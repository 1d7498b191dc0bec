"""Split mode: front processes (protocols, admission, Pillow decoding) feed one engine process
(lifecycle, batcher, sessions) across a Unix socket, with payloads in shared memory the engine owns.

  supervisor.py  binds the ports, starts the engine and the fronts, restarts whichever dies
  engine_side.py the engine process's server: descriptors in, results out, state published
  grouped.py     its per-batch path: one-image pixel calls queued per frame, answered per batch
  remote.py      a front's engine client (core/client.py's EngineClient across the boundary)
  slab.py        the shared memory and each front's allocator in its part of it
  wire.py        framing: length-prefixed pickled lists of messages, one frame per loop turn
  state.py       the engine's state as fronts see it (records, readiness, listings)
"""
