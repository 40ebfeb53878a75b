"""The official Python SDK's built-in MCP server (payments-py 1.18 `PaymentsMCP`) selling
the same `weather` tool as examples/mcp_server.rs (2 credits), for benches/mcp.rs to
compare against on the same devserver.

Environment: NVM_API_KEY (the builder's `local:` key), NVM_BACKEND_URL, NVM_PLAN_ID,
NVM_AGENT_ID. Prints `listening <url>` once it serves, then runs until killed.
"""

import asyncio
import os
import socket

from payments_py import Payments, PaymentOptions
from payments_py.mcp import PaymentsMCP


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main():
    payments = Payments.get_instance(PaymentOptions(nvm_api_key=os.environ["NVM_API_KEY"]))
    mcp = PaymentsMCP(
        payments,
        name="weather-mcp",
        plan_id=os.environ["NVM_PLAN_ID"],
        agent_id=os.environ["NVM_AGENT_ID"],
    )

    @mcp.tool(name="weather", description="Today's weather in a city", credits=2)
    def weather(city: str) -> str:
        return f"Weather in {city}: 22C, sunny"

    port = free_port()
    await mcp.start(port=port, host="127.0.0.1", on_log=lambda _message: None)
    print(f"listening http://127.0.0.1:{port}/mcp", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
