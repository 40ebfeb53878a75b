"""Stock Python clients against a Rust agent guarded by PaymentLayer, over the devserver.

Run by tests/e2e/python_sdk.rs with NVM_API_KEY (the plan builder), NVM_SUBSCRIBER_API_KEY,
NVM_BACKEND_URL, NVM_PLAN_ID (a fiat plan: 10 credits per order, 1 per request) and
AGENT_URL (the guarded agent; POST /ask) set. It checks that

- coinbase's `x402` package (PyPI) validates the layer's `payment-required` header and
  `payment-response` receipt with its own models;
- the fiat plan is advertised as `nvm:card-delegation` on `stripe`, as payments-py
  resolves it, and a token minted by payments-py against a card delegation pays;
- a v3 (single-use) token requested through payments-py pays once: a replay is refused
  by the layer, and a second settle by the facilitator fails with BCK.X402.0059.

Exits non-zero on any mismatch; the last stdout line is a JSON summary.
"""

import json
import os
import sys

import requests
from payments_py import Payments, PaymentOptions
from payments_py.common.payments_error import PaymentsError
from payments_py.x402.helpers import build_payment_required
from payments_py.x402.types import CreateDelegationPayload, DelegationConfig, X402TokenOptions
from x402.http.utils import decode_payment_required_header, decode_payment_response_header


def check(cond, what):
    if not cond:
        print(f"MISMATCH: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def ask(url, token=None):
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["payment-signature"] = token
    return requests.post(url, data="{}", headers=headers, timeout=30)


def main():
    builder = Payments.get_instance(PaymentOptions(nvm_api_key=os.environ["NVM_API_KEY"]))
    subscriber = Payments.get_instance(
        PaymentOptions(nvm_api_key=os.environ["NVM_SUBSCRIBER_API_KEY"])
    )
    plan_id = os.environ["NVM_PLAN_ID"]
    agent = os.environ["AGENT_URL"] + "/ask"

    # 1. The 402, read by the stock x402 client's model.
    unpaid = ask(agent)
    check(unpaid.status_code == 402, "an unpaid request is answered 402")
    required = decode_payment_required_header(unpaid.headers["payment-required"])
    check(required.x402_version == 2, "x402 validates the payment-required header")
    accepted = required.accepts[0]
    check(accepted.scheme == "nvm:card-delegation", "a fiat plan is advertised as card delegation")
    check(accepted.network == "stripe", "on its fiat provider")
    check(accepted.amount == "1", "amount: the credits one request spends")
    check(accepted.pay_to.lower() == builder.account_address.lower(), "payTo: the plan owner")
    check(accepted.max_timeout_seconds > 0, "maxTimeoutSeconds is set")
    check(required.resource.url == "/ask", "the resource is the route")

    # 2. The fiat order through the (fake) Stripe checkout.
    order = subscriber.plans.order_fiat_plan(plan_id)
    link = order["result"]["checkoutLink"]
    done = requests.get(link, headers={"accept": "application/json"}, timeout=30)
    check(done.ok, "the checkout completes")
    check(subscriber.plans.get_plan_balance(plan_id).balance == 10, "the fiat order grants 10 credits")

    # 3. A card delegation, and a token minted against it with the card scheme.
    delegation = subscriber.delegation.create_delegation(
        CreateDelegationPayload(
            provider="stripe", spending_limit_cents=5000, duration_secs=3600, currency="usd"
        )
    )
    card = X402TokenOptions(
        scheme="nvm:card-delegation",
        delegation_config=DelegationConfig(delegation_id=delegation.delegation_id),
    )
    token = subscriber.x402.get_x402_access_token(plan_id, token_options=card)["accessToken"]
    paid = ask(agent, token)
    check(paid.status_code == 200, f"a card-delegation token pays ({paid.status_code} {paid.text})")
    receipt = decode_payment_response_header(paid.headers["payment-response"])
    check(receipt.success, "x402 validates the payment-response receipt")
    check(subscriber.plans.get_plan_balance(plan_id).balance == 9, "one credit burned")

    # 4. v3: single use, bound to the route as the layer advertises it.
    v3 = X402TokenOptions(
        scheme="nvm:card-delegation",
        delegation_config=DelegationConfig(delegation_id=delegation.delegation_id),
        resource="/ask",
        http_verb="POST",
        token_version=3,
    )
    minted = subscriber.x402.get_x402_access_token(plan_id, token_options=v3)
    check(minted.get("tokenVersion") == 3, "payments-py requests a v3 token and gets one")
    single = minted["accessToken"]
    first = ask(agent, single)
    check(first.status_code == 200, f"a v3 token pays once ({first.status_code} {first.text})")
    replay = ask(agent, single)
    check(replay.status_code == 402, f"its replay is refused ({replay.status_code})")
    check("payment-response" not in replay.headers, "and nothing is charged for it")
    check(subscriber.plans.get_plan_balance(plan_id).balance == 8, "one more credit burned, not two")

    # The facilitator refuses a second settle of the spent v3 token.
    pr = build_payment_required(
        plan_id, endpoint="/ask", http_verb="POST", scheme="nvm:card-delegation", network="stripe"
    )
    try:
        again = builder.facilitator.settle_permissions(pr, single, max_amount="1")
        spent = not again.success and "0059" in json.dumps(again.model_dump(), default=str)
    except PaymentsError as err:
        spent = "0059" in str(err)
    check(spent, "settling a spent v3 token fails with BCK.X402.0059")

    final = subscriber.plans.get_plan_balance(plan_id).balance
    print(json.dumps({"finalBalance": final}))


if __name__ == "__main__":
    main()
