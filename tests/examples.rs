//! The examples run end to end on the embedded devserver.

#[path = "../examples/seed_flow.rs"]
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
