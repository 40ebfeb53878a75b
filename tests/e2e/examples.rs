//! The examples run end to end on the embedded devserver.

#[path = "../../examples/seed_flow.rs"]
#[allow(dead_code)]
mod seed_flow;

#[tokio::test]
async fn seed_flow_runs_and_balances_move() {
    let mut out = Vec::new();
    seed_flow::run(&mut out)
        .await
        .expect("the seed flow succeeds");
    let text = String::from_utf8(out).unwrap();
    let balances: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("balance"))
        .map(str::trim)
        .collect();
    assert_eq!(
        balances,
        ["0 (subscriber: false)", "100 (subscriber: true)", "150"],
        "{text}"
    );
}

#[path = "../../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

#[tokio::test]
async fn quickstart_tells_the_whole_story() {
    let mut out = Vec::new();
    let answers = quickstart::run(&mut out)
        .await
        .expect("the quickstart succeeds");
    let text = String::from_utf8(out).unwrap();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();

    // No token: 402 payment_required, shown.
    assert_eq!(statuses[0], 402, "{text}");
    assert_eq!(answers[0].summary, "payment_required");
    assert!(text.contains("balance 0 (subscriber: false)"), "{text}");
    assert!(text.contains("balance 100 (subscriber: true)"), "{text}");
    // 100 credits + 50 minted, 10 per call: exactly 15 calls served, then refused.
    assert_eq!(
        statuses[1..].iter().filter(|s| **s == 200).count(),
        15,
        "{text}"
    );
    assert_eq!(statuses.last(), Some(&402));
    assert_eq!(answers.last().unwrap().summary, "insufficient_balance");
    assert!(
        text.contains("balance now 90") && text.contains("balance now 70"),
        "{text}"
    );
    assert!(text.contains("15 calls served, balance 0"), "{text}");
}
