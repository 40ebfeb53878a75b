"""Drives the official Python MCP client (PyPI `mcp`, streamable HTTP) against
examples/mcp_server.rs, which sells `weather` for 2 credits and gives `echo` away.

Run by tests/e2e/mcp.rs with MCP_URL (the server's /mcp), NVM_PLAN_ID, and TOKEN_A /
TOKEN_B (x402 access tokens of two subscribers). Exits non-zero on any mismatch; the
Rust test then checks the ledger: A pays 5 calls, B one, 2 credits each.
"""

import asyncio
import base64
import json
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


def check(cond, what):
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def decode(token):
    """The payment payload object, as the SDKs' clients put it in _meta."""
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def check_charged(result, what):
    check(not result.isError, f"{what}: served")
    check("22C" in result.content[0].text, f"{what}: the tool's output")
    receipt = (result.meta or {}).get("x402/payment-response", {})
    check(receipt.get("success") is True, f"{what}: x402/payment-response success")
    check(receipt.get("creditsRedeemed") == "2", f"{what}: 2 credits redeemed")
    credits = (result.meta or {}).get("nevermined/credits", {})
    check(credits.get("planId") == os.environ["NVM_PLAN_ID"], f"{what}: nevermined/credits planId")


async def main():
    url = os.environ["MCP_URL"]
    plan = os.environ["NVM_PLAN_ID"]
    token_a, token_b = os.environ["TOKEN_A"], os.environ["TOKEN_B"]

    # No Authorization header at all: the payment travels in band.
    async with streamablehttp_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            names = {tool.name for tool in tools.tools}
            check({"weather", "echo"} <= names, f"tools listed: {sorted(names)}")

            unpaid = await session.call_tool("weather", {"city": "Rome"})
            check(unpaid.isError, "unpaid weather is refused")
            pr = unpaid.structuredContent or {}
            check(pr.get("error") == "payment required", "PaymentRequired error")
            check(pr.get("accepts", [{}])[0].get("planId") == plan, "it names the plan")
            check(json.loads(unpaid.content[0].text) == pr, "the PaymentRequired as text too")

            paid = await session.call_tool(
                "weather", {"city": "Rome"}, meta={"x402/payment": decode(token_a)}
            )
            check_charged(paid, "paid in band (_meta)")

            free = await session.call_tool("echo", {"text": "hello"})
            check(not free.isError and free.content[0].text == "hello", "echo is free")

    # The token in the Authorization header of every HTTP request.
    async with streamablehttp_client(url, headers={"Authorization": f"Bearer {token_a}"}) as (
        read,
        write,
        _,
    ):
        async with ClientSession(read, write) as session:
            await session.initialize()
            check_charged(await session.call_tool("weather", {"city": "Oslo"}), "paid by header")

    # Two clients, two sessions, two tokens, calls interleaved: A's session is opened
    # first, so a server reading "the latest session's headers" would charge B for A.
    async with streamablehttp_client(url, headers={"Authorization": f"Bearer {token_a}"}) as (
        read_a,
        write_a,
        _,
    ), streamablehttp_client(url, headers={"Authorization": f"Bearer {token_b}"}) as (
        read_b,
        write_b,
        _,
    ):
        async with ClientSession(read_a, write_a) as a, ClientSession(read_b, write_b) as b:
            await a.initialize()
            await b.initialize()
            for who, session in [("A", a), ("B", b), ("A", a), ("A", a)]:
                check_charged(await session.call_tool("weather", {"city": "Lima"}), f"{who} interleaved")

    print(json.dumps({"ok": True}))


asyncio.run(main())
