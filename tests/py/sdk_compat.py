"""Drives the official Python SDK (payments-py 1.18) against the nvm-payments devserver.

Run by tests/e2e/python_sdk.rs with NVM_API_KEY (the plan builder's `local:` key),
NVM_SUBSCRIBER_API_KEY (a second account) and NVM_BACKEND_URL set. Exits non-zero on
any mismatch; the last stdout line is a JSON summary the Rust test checks.
"""

import json
import os
import sys

from payments_py import Payments, PaymentOptions
from payments_py.common.payments_error import PaymentsError
from payments_py.common.types import AgentAPIAttributes, AgentMetadata, PlanMetadata
from payments_py.plans import get_dynamic_credits_config, get_erc20_price_config
from payments_py.x402.helpers import build_payment_required
from payments_py.x402.types import CreateDelegationPayload, DelegationConfig, X402TokenOptions

ERC20 = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"


def check(cond, what):
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    builder = Payments.get_instance(PaymentOptions(nvm_api_key=os.environ["NVM_API_KEY"]))
    subscriber = Payments.get_instance(
        PaymentOptions(nvm_api_key=os.environ["NVM_SUBSCRIBER_API_KEY"])
    )
    backend = os.environ["NVM_BACKEND_URL"]
    check(builder.environment_name == "custom", "a local: key resolves to the custom environment")
    check(builder.environment.backend == backend, "the SDK calls NVM_BACKEND_URL")
    sub_addr = subscriber.account_address
    owner = builder.account_address

    # Register a dynamic credits plan with the SDK's own helpers: 20 ERC20 units for
    # 100 credits, each request burns 1..2.
    price = get_erc20_price_config(20, ERC20, owner)
    credits = get_dynamic_credits_config(100, 1, 2)
    registered = builder.plans.register_credits_plan(PlanMetadata(name="py-sdk plan"), price, credits)
    plan_id = registered["planId"]
    check(int(plan_id) > 0, "register_credits_plan returns a decimal planId")

    plan = builder.plans.get_plan(plan_id)
    check(plan["id"] == plan_id, "get_plan returns the plan id")
    check(plan["registry"]["owner"].lower() == owner.lower(), "the plan owner is the builder")
    check(plan["registry"]["credits"]["maxAmount"] == "2", "credits config round-trips as strings")

    try:
        builder.plans.get_plan("11111")
        check(False, "an unknown plan is an error")
    except PaymentsError:
        check(True, "an unknown plan is an error")

    balance = subscriber.plans.get_plan_balance(plan_id)
    check(balance.balance == 0 and not balance.is_subscriber, "no balance before ordering")

    order = subscriber.plans.order_plan(plan_id)
    check(order["success"] is True and order["txHash"].startswith("0x"), "order_plan succeeds")
    balance = subscriber.plans.get_plan_balance(plan_id)
    check(balance.balance == 100 and balance.is_subscriber, "ordering grants 100 credits")
    check(balance.plan_type == "credits", "planType is credits")

    builder.plans.mint_plan_credits(plan_id, 5, sub_addr)
    check(subscriber.plans.get_plan_balance(plan_id).balance == 105, "mint adds 5 credits")
    builder.plans.mint_plan_expirable(plan_id, 7, sub_addr, 3600)
    check(subscriber.plans.get_plan_balance(plan_id).balance == 112, "mint_plan_expirable adds 7 credits")

    builder.plans.mint_plan_credits(plan_id, 10, owner)
    builder.plans.burn_credits(plan_id, "4")
    check(builder.plans.get_plan_balance(plan_id).balance == 6, "burn_credits burns from the caller")

    try:
        subscriber.plans.mint_plan_credits(plan_id, 5, sub_addr)
        check(False, "only the plan owner can mint")
    except PaymentsError:
        check(True, "only the plan owner can mint")

    agent = builder.agents.register_agent(
        AgentMetadata(name="py-sdk agent"),
        AgentAPIAttributes(endpoints=[{"verb": "POST", "url": "http://localhost:8000/ask"}]),
        [plan_id],
    )
    agent_id = agent["agentId"]
    check(int(agent_id) > 0, "register_agent returns a decimal agentId")

    token = subscriber.x402.get_x402_access_token(plan_id, agent_id)["accessToken"]
    check(isinstance(token, str) and len(token) > 100, "get_x402_access_token returns a token")

    # The create-first delegation flow (what the TS SDK requires) works too.
    delegation = subscriber.delegation.create_delegation(
        CreateDelegationPayload(
            provider="erc4337", spending_limit_cents=10000, duration_secs=604800, currency="usdc"
        )
    )
    check(len(delegation.delegation_id) == 36, "create_delegation returns a uuid")
    listed = subscriber.delegation.list_delegations()
    check([d.id for d in listed] == [delegation.delegation_id], "list_delegations lists it")
    delegated = subscriber.x402.get_x402_access_token(
        plan_id,
        agent_id,
        token_options=X402TokenOptions(
            delegation_config=DelegationConfig(delegation_id=delegation.delegation_id)
        ),
    )["accessToken"]
    check(isinstance(delegated, str) and len(delegated) > 100, "a token minted against a delegation")

    required = build_payment_required(plan_id, endpoint="/ask", agent_id=agent_id, http_verb="POST")
    verified = builder.facilitator.verify_permissions(required, token, max_amount="2")
    check(verified.is_valid, f"verify_permissions is valid ({verified.invalid_reason})")
    check(verified.payer.lower() == sub_addr.lower(), "verify names the payer")
    check(subscriber.plans.get_plan_balance(plan_id).balance == 112, "verify does not spend")

    settled = builder.facilitator.settle_permissions(
        required, token, max_amount="2", agent_request_id=verified.agent_request_id
    )
    check(settled.success, f"settle_permissions succeeds ({settled.error_reason})")
    check(settled.credits_redeemed == "2", "settle burns 2 credits")
    check(settled.remaining_balance == "110", "settle reports the remaining balance")
    again = builder.facilitator.settle_permissions(
        required, token, max_amount="2", agent_request_id=verified.agent_request_id
    )
    check(again.transaction == settled.transaction, "settle is idempotent by agentRequestId")

    other_plan = build_payment_required("12345", endpoint="/ask", agent_id=agent_id, http_verb="POST")
    wrong = builder.facilitator.verify_permissions(other_plan, token, max_amount="1")
    check(not wrong.is_valid and wrong.invalid_reason == "invalid_plan", "a token for another plan is invalid_plan")

    final = subscriber.plans.get_plan_balance(plan_id)
    check(final.balance == 110, "final balance is 110")
    print(json.dumps({"planId": plan_id, "finalBalance": final.balance}))


if __name__ == "__main__":
    main()
