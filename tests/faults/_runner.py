"""Run `mrt-star ARGS` with the fault hooks a test asks for through the environment (test-only instrumentation).

MRT_FAULT_PACE=S      sleep S seconds after each finished shard and each saved checkpoint, so a test that
                      kills on progress (a new shard or checkpoint in the folder) lands between two writes.
MRT_FAULT_MARKS=DIR   after each checkpoint is saved whole, touch DIR/checkpoint-N (outside the model folder).
MRT_FAULT_ENOSPC_AT=N the N-th parquet write (0-based) leaves half a file and raises ENOSPC, like a full disk.
Everything else is the real CLI on real components.
"""

from __future__ import annotations

import errno
import os
import sys
import time


def _install_hooks() -> None:
    pace = float(os.environ.get("MRT_FAULT_PACE", "0") or 0)
    fail_at = os.environ.get("MRT_FAULT_ENOSPC_AT")
    marks = os.environ.get("MRT_FAULT_MARKS")
    if pace or marks:
        from mrt_star.store import Store

        write_shard = Store.write_shard

        def paced_write(self, *args, **kwargs):
            path = write_shard(self, *args, **kwargs)
            time.sleep(pace)
            return path

        Store.write_shard = paced_write
        import transformers

        save = transformers.Trainer._save_checkpoint

        def paced_save(self, *args, **kwargs):
            result = save(self, *args, **kwargs)
            if marks:
                os.makedirs(marks, exist_ok=True)
                open(os.path.join(marks, f"checkpoint-{self.state.global_step}"), "w").close()
            time.sleep(pace)
            return result

        transformers.Trainer._save_checkpoint = paced_save
    if fail_at is not None:
        import pyarrow.parquet as pq

        write_table, calls = pq.write_table, [0]

        def full_disk(table, where, *args, **kwargs):
            calls[0] += 1
            if calls[0] - 1 == int(fail_at):
                with open(where, "wb") as f:
                    f.write(b"PAR1 half a shard")
                raise OSError(errno.ENOSPC, "No space left on device")
            return write_table(table, where, *args, **kwargs)

        pq.write_table = full_disk


if __name__ == "__main__":
    _install_hooks()
    from mrt_star.cli import main

    sys.exit(main(sys.argv[1:]))
