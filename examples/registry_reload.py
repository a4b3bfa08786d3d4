"""Pipelines from configuration, reloaded at run time without re-decorating.

Run: python examples/registry_reload.py
"""

from __future__ import annotations

import asyncio

from resilient.registry import Registry

CONFIG = {
    "pipelines": {
        "inventory": [
            {"type": "timeout", "seconds": 5},
            {
                "type": "retry",
                "attempts": 2,
                "backoff": {"type": "constant", "delay": 0.001},
                "on": ["ConnectionError"],
            },
        ]
    }
}

registry = Registry(CONFIG)
calls = 0


@registry.policy("inventory")
async def stock(sku: str) -> int:
    global calls
    calls += 1
    if calls % 3:
        raise ConnectionError("inventory flaky")
    return 7


async def main() -> None:
    global calls
    try:
        await stock("A-1")
    except ConnectionError:
        print(f"with attempts=2: gave up after {calls} calls")
    # An operator raises the attempts; the decorated function follows.
    CONFIG["pipelines"]["inventory"][1]["attempts"] = 3
    registry.configure(CONFIG)
    calls = 0
    print(f"with attempts=3: stock={await stock('A-1')} after {calls} calls")


if __name__ == "__main__":
    asyncio.run(main())
