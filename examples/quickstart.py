"""Three electors on the embedded FileStorage: who leads, then a failover.

Run: python examples/quickstart.py
"""

import asyncio
import tempfile
import time

from fastelect import Elector, ElectorConfig, FileStorage


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        storage = FileStorage(directory)
        electors = [
            Elector(
                ElectorConfig(
                    "leader.json",
                    f"node-{i}",
                    frequent_interval=0.2,
                    infrequent_interval=1.0,
                    leader_timeout=1.0,
                ),
                storage,
            )
            for i in range(3)
        ]
        for elector in electors:
            await elector.start()
        leader = await first_leader(electors)
        print(f"{leader.leader_id} leads (term {leader.term})")
        stopped = time.monotonic()
        await leader.stop()  # releases the lock: a follower takes it at its next poll
        rest = [e for e in electors if e is not leader]
        new = await first_leader(rest)
        took = time.monotonic() - stopped
        print(f"{new.leader_id} took over in {took:.2f}s (term {new.term})")
        for elector in rest:
            await elector.stop()
        await storage.close()


async def first_leader(electors: list[Elector]) -> Elector:
    while True:
        for elector in electors:
            if elector.is_leader():
                return elector
        await asyncio.sleep(0.01)


if __name__ == "__main__":
    asyncio.run(main())
