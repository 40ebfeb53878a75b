//! The `nvm-payments` binary end to end against an in-process devserver on
//! `127.0.0.1:0`: every command, `--json` output, one-line failures, no key leaks, and
//! the `dev-server` command itself.
//!
//! The binary runs through `std::process` inside `spawn_blocking`, so the runtime's
//! worker threads stay free to serve the devserver it talks to.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nvm_payments::client::PaymentRequiredOptions;
use nvm_payments::credential::BearerVerifier;
use nvm_payments::devserver::{DevServer, Fault};
use nvm_payments::types::DevAccount;
use nvm_payments::{AccessToken, AgentId, Credits, PlanId};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nvm-payments");

/// What one run of the binary left behind.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout of a run that must have succeeded.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed: {}",
            self.args.join(" "),
            self.stderr
        );
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no JSON ({e}): {}",
                self.args.join(" "),
                self.stdout
            )
        })
    }

    /// The single stderr line of a run that must have failed with `code`.
    fn failed(&self, code: i32) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "`{}`: stdout {:?} stderr {:?}",
            self.args.join(" "),
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr, got {:?}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
        assert!(
            self.stdout.is_empty(),
            "nothing on stdout: {:?}",
            self.stdout
        );
        lines[0]
    }
}

/// The binary pointed at one backend, acting as one account (or none). Every run is
/// recorded so a test can look for leaked secrets afterwards.
#[derive(Clone)]
struct Nvm {
    backend: String,
    key: Option<String>,
    env: Vec<(&'static str, String)>,
    transcript: Arc<Mutex<Vec<String>>>,
}

impl Nvm {
    fn new(backend: impl Into<String>) -> Self {
        Nvm {
            backend: backend.into(),
            key: None,
            env: Vec::new(),
            transcript: Arc::default(),
        }
    }

    /// The same, authenticated through `NVM_API_KEY` as `account`.
    fn as_account(&self, account: &DevAccount) -> Self {
        self.with_key(account.api_key.expose())
    }

    fn with_key(&self, key: &str) -> Self {
        Nvm {
            key: Some(key.to_owned()),
            ..self.clone()
        }
    }

    fn with_env(&self, name: &'static str, value: &str) -> Self {
        let mut next = self.clone();
        next.env.push((name, value.to_owned()));
        next
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--backend-url")
            .arg(&self.backend)
            .env_remove("NVM_API_KEY")
            .env_remove("NVM_BACKEND_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        if let Some(key) = &self.key {
            cmd.env("NVM_API_KEY", key);
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("the blocking task ran")
            .expect("the binary started");
        let run = Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.transcript
            .lock()
            .unwrap()
            .push(format!("{}\n{}", run.stdout, run.stderr));
        run
    }

    /// `accounts create --json`, parsed; kept out of the transcript (it prints a key
    /// on purpose).
    async fn create_account(&self, name: &str) -> DevAccount {
        let run = self
            .run(&["accounts", "create", "--name", name, "--json"])
            .await;
        self.transcript.lock().unwrap().pop();
        serde_json::from_str(run.ok()).expect("accounts create --json is a DevAccount")
    }

    fn transcript(&self) -> String {
        self.transcript.lock().unwrap().join("\n")
    }
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is a string in {v}"))
}

/// The value of a `key:` line in human output.
fn human_value(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no `{key}:` line in {stdout:?}"))
}

async fn balance_of(nvm: &Nvm, plan: &str) -> String {
    field(
        &nvm.run(&["plans", "balance", plan, "--json"]).await.json(),
        "balance",
    )
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_end_to_end() {
    let server = DevServer::start().await.unwrap();
    let anon = Nvm::new(server.base_url());

    // accounts create: human output names the address and the key, and says how to use it.
    let human = anon.run(&["accounts", "create"]).await;
    anon.transcript.lock().unwrap().pop();
    let key = human_value(human.ok(), "api key");
    assert!(key.starts_with("local:"), "{key}");
    assert!(human
        .stdout
        .contains(&format!("export NVM_API_KEY='{key}'")));
    let builder_acct = anon.create_account("builder").await;
    let subscriber_acct = anon.create_account("subscriber").await;
    let builder = anon.as_account(&builder_acct);
    let subscriber = anon.as_account(&subscriber_acct);
    let (builder_addr, subscriber_addr) = (
        builder_acct.address.to_string(),
        subscriber_acct.address.to_string(),
    );

    // register-credits (native price, fixed 2 per request) and get it back.
    let plan = builder
        .run(&[
            "plans",
            "register-credits",
            "--name",
            "Pro",
            "--credits",
            "100",
            "--per-request",
            "2",
            "--native-price",
            "5",
            "--json",
        ])
        .await
        .json();
    let plan = field(&plan, "planId").to_owned();
    let got = anon.run(&["plans", "get", &plan, "--json"]).await.json();
    assert_eq!(got["id"], plan.as_str());
    assert_eq!(got["metadata"]["main"]["name"], "Pro");
    assert_eq!(got["registry"]["credits"]["amount"], "100");
    assert_eq!(got["registry"]["credits"]["maxAmount"], "2");
    assert_eq!(got["registry"]["price"]["amounts"][0], "5");
    assert!(got["registry"]["owner"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case(&builder_addr));
    let human = anon.run(&["plans", "get", &plan]).await;
    assert_eq!(human_value(human.ok(), "name"), "Pro");
    assert_eq!(human_value(&human.stdout, "per request"), "2");

    // order, then balance (own and --holder, which needs no key).
    let ordered = subscriber
        .run(&["plans", "order", &plan, "--json"])
        .await
        .json();
    assert_eq!(ordered["success"], true);
    assert_eq!(balance_of(&subscriber, &plan).await, "100");
    let held = anon
        .run(&["plans", "balance", &plan, "--holder", &subscriber_addr])
        .await;
    assert_eq!(human_value(held.ok(), "balance"), "100");
    assert_eq!(human_value(&held.stdout, "subscriber"), "yes");
    assert_eq!(balance_of(&builder, &plan).await, "0");

    // mint, mint-expirable (lapses on the server clock), burn.
    builder
        .run(&[
            "plans",
            "mint",
            &plan,
            "--amount",
            "5",
            "--to",
            &subscriber_addr,
        ])
        .await
        .ok();
    assert_eq!(balance_of(&subscriber, &plan).await, "105");
    builder
        .run(&[
            "plans",
            "mint-expirable",
            &plan,
            "--amount",
            "7",
            "--to",
            &subscriber_addr,
            "--duration-secs",
            "60",
        ])
        .await
        .ok();
    assert_eq!(balance_of(&subscriber, &plan).await, "112");
    server.advance_clock(61);
    assert_eq!(balance_of(&subscriber, &plan).await, "105");
    // The devserver lets only a plan's owner burn, from the owner's own balance.
    let line = subscriber
        .run(&["plans", "burn", &plan, "--amount", "5"])
        .await
        .failed(1)
        .to_owned();
    assert!(line.contains("403"), "{line}");
    builder
        .run(&[
            "plans",
            "mint",
            &plan,
            "--amount",
            "9",
            "--to",
            &builder_addr,
        ])
        .await
        .ok();
    let burned = builder
        .run(&["plans", "burn", &plan, "--amount", "5"])
        .await;
    assert_eq!(human_value(burned.ok(), "burned"), "5");
    assert_eq!(balance_of(&builder, &plan).await, "4");
    assert_eq!(balance_of(&subscriber, &plan).await, "105");

    // agents register / get.
    let agent = builder
        .run(&[
            "agents",
            "register",
            "--name",
            "Weather",
            "--endpoint",
            "POST http://127.0.0.1:9/ask",
            "--endpoint",
            "get http://127.0.0.1:9/tasks/:id",
            "--plan",
            &plan,
            "--json",
        ])
        .await
        .json();
    let agent = field(&agent, "agentId").to_owned();
    let got = anon.run(&["agents", "get", &agent, "--json"]).await.json();
    assert_eq!(got["registry"]["plans"][0], plan.as_str());
    assert_eq!(got["metadata"]["main"]["name"], "Weather");
    let human = anon.run(&["agents", "get", &agent]).await;
    assert!(human
        .ok()
        .contains("endpoint:  GET http://127.0.0.1:9/tasks/:id"));
    assert_eq!(human_value(&human.stdout, "plans"), plan);

    // token x402: printed alone, and the facilitator accepts it for this subscriber.
    let token = subscriber
        .run(&["token", "x402", &plan, "--agent", &agent])
        .await;
    let token = token.ok().trim().to_owned();
    assert!(!token.is_empty() && !token.contains(char::is_whitespace));
    let plan_id: PlanId = plan.parse().unwrap();
    let agent_id: AgentId = agent.parse().unwrap();
    let owner = server.payments(&builder_acct);
    let required = owner.x402().build_payment_required(
        &plan_id,
        &PaymentRequiredOptions {
            endpoint: Some("http://127.0.0.1:9/ask".into()),
            agent_id: Some(agent_id.clone()),
            http_verb: Some("POST".into()),
            ..Default::default()
        },
    );
    let verdict = owner
        .x402()
        .verify_permissions(
            &required,
            &AccessToken::new(token.clone()),
            Some(Credits::from(2u64)),
        )
        .await
        .unwrap();
    assert!(verdict.is_valid, "{verdict:?}");
    assert_eq!(verdict.payer.as_ref(), Some(&subscriber_acct.address));
    let as_json = subscriber
        .run(&["token", "x402", &plan, "--json"])
        .await
        .json();
    assert!(!field(&as_json, "accessToken").is_empty());

    // token jwt: a bearer JWT the issuer's JWKS verifies, naming subscriber, plan, agent.
    let jwt = subscriber.run(&["token", "jwt", &plan, &agent]).await;
    let jwt = jwt.ok().trim().to_owned();
    let jwks = owner.x402().get_access_token_jwks().await.unwrap();
    let claims = BearerVerifier::from_jwks(&jwks)
        .unwrap()
        .verify_at(&jwt, server.now())
        .expect("the devserver signed it");
    assert_eq!(claims.sub, subscriber_acct.address);
    assert_eq!(claims.plan_id, plan_id);
    assert_eq!(claims.agent_id, Some(agent_id));

    // order-fiat: open the checkout link, then the credits are there.
    let fiat = builder
        .run(&[
            "plans",
            "register-credits",
            "--name",
            "Card",
            "--credits",
            "30",
            "--fiat-price",
            "2000000",
            "--currency",
            "usd",
            "--json",
        ])
        .await
        .json();
    let fiat = field(&fiat, "planId").to_owned();
    let got = anon.run(&["plans", "get", &fiat, "--json"]).await.json();
    assert_eq!(got["registry"]["price"]["isCrypto"], false);
    assert_eq!(got["registry"]["price"]["currency"], "USD");
    let checkout = subscriber.run(&["plans", "order-fiat", &fiat]).await;
    let link = human_value(checkout.ok(), "checkout");
    assert!(human_value(&checkout.stdout, "session id").starts_with("cs_"));
    assert_eq!(balance_of(&subscriber, &fiat).await, "0");
    let page = reqwest::get(&link).await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    assert_eq!(balance_of(&subscriber, &fiat).await, "30");
    let json_checkout = subscriber
        .run(&["plans", "order-fiat", &fiat, "--json"])
        .await
        .json();
    assert!(field(&json_checkout, "checkoutLink").starts_with("http://"));

    // register-time (ERC20 price, explicit receiver) and a dynamic credits trial plan.
    let token_addr = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    let timed = builder
        .run(&[
            "plans",
            "register-time",
            "--name",
            "Day",
            "--duration-secs",
            "86400",
            "--price",
            "20",
            "--token",
            token_addr,
            "--receiver",
            &subscriber_addr,
            "--json",
        ])
        .await
        .json();
    let timed = field(&timed, "planId").to_owned();
    let got = anon.run(&["plans", "get", &timed, "--json"]).await.json();
    assert_eq!(got["metadata"]["plan"]["accessLimit"], "time");
    assert_eq!(got["registry"]["credits"]["durationSecs"], "86400");
    assert_eq!(got["registry"]["price"]["tokenAddress"], token_addr);
    assert!(got["registry"]["price"]["receivers"][0]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case(&subscriber_addr));
    let trial = builder
        .run(&[
            "plans",
            "register-credits",
            "--name",
            "Taste",
            "--credits",
            "10",
            "--per-request",
            "1",
            "--max-per-request",
            "3",
            "--free",
            "--trial",
        ])
        .await;
    let trial = human_value(trial.ok(), "plan id");
    let got = anon.run(&["plans", "get", &trial, "--json"]).await.json();
    assert_eq!(got["metadata"]["main"]["isTrialPlan"], true);
    assert_eq!(got["registry"]["credits"]["minAmount"], "1");
    assert_eq!(got["registry"]["credits"]["maxAmount"], "3");
    subscriber.run(&["plans", "order", &trial]).await.ok();
    subscriber.run(&["plans", "order", &trial]).await.failed(1);

    // No command but `accounts create` printed a key, and no key reached a message.
    let transcript = anon.transcript();
    for (who, account) in [("builder", &builder_acct), ("subscriber", &subscriber_acct)] {
        let key = account.api_key.expose();
        let jwt = key.split_once(':').unwrap().1;
        assert!(
            !transcript.contains(jwt),
            "the {who}'s API key was printed by a command other than `accounts create`"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_on_one_line_before_any_request() {
    let server = DevServer::start().await.unwrap();
    let acct = server.create_account(Some("someone"));
    let nvm = Nvm::new(server.base_url()).as_account(&acct);
    server.reset_stats();
    let addr = acct.address.to_string();
    let cases: [(&[&str], &str); 9] = [
        (&["plans", "get", "0xabc"], "'<PLAN>'"),
        (
            &["plans", "balance", "12", "--holder", "0x12"],
            "'--holder <ADDR>'",
        ),
        (
            &["plans", "mint", "12", "--amount", "1.5", "--to", &addr],
            "'--amount <CREDITS>'",
        ),
        (&["plans", "burn", "12", "--amount", "-1"], "--amount"),
        (
            &[
                "plans",
                "mint",
                "12",
                "--amount",
                "1157920892373161954235709850086879078532699846656405640394575840079131296399360",
                "--to",
                &addr,
            ],
            "larger than 2^256",
        ),
        (
            &[
                "agents",
                "register",
                "--name",
                "a",
                "--endpoint",
                "https://x",
            ],
            "'--endpoint <'VERB URL'>'",
        ),
        (&["token", "jwt", "12", "agent"], "'<AGENT>'"),
        (
            &[
                "plans",
                "register-credits",
                "--name",
                "x",
                "--credits",
                "10",
            ],
            "--price <AMOUNT>|--native-price",
        ),
        (
            &[
                "plans",
                "register-credits",
                "--name",
                "x",
                "--credits",
                "10",
                "--free",
                "--native-price",
                "1",
            ],
            "cannot be used with",
        ),
    ];
    for (args, names) in cases {
        let line = nvm.run(args).await.failed(2).to_owned();
        assert!(line.contains(names), "`{}`: {line}", args.join(" "));
    }
    let line = nvm
        .run(&[
            "plans",
            "register-credits",
            "--name",
            "x",
            "--credits",
            "10",
            "--per-request",
            "3",
            "--max-per-request",
            "2",
            "--free",
        ])
        .await
        .failed(1)
        .to_owned();
    assert!(
        line.contains("--max-per-request (2) must be at least --per-request (3)"),
        "{line}"
    );
    assert_eq!(server.stats().total(), 0, "{:?}", server.stats());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_fail_on_one_line() {
    let server = DevServer::start().await.unwrap();
    let other = DevServer::start().await.unwrap();
    let acct = server.create_account(Some("someone"));
    let stranger = other.create_account(Some("stranger"));
    let anon = Nvm::new(server.base_url());
    let nvm = anon.as_account(&acct);

    let line = anon
        .run(&["plans", "get", "999"])
        .await
        .failed(1)
        .to_owned();
    assert!(
        line.contains("BCK.PROTOCOL.0002") && line.contains("404"),
        "{line}"
    );
    let line = anon
        .run(&["agents", "get", "999"])
        .await
        .failed(1)
        .to_owned();
    assert!(line.contains("404"), "{line}");

    // A well-formed key this backend did not issue, then a malformed one, then none.
    let line = anon
        .as_account(&stranger)
        .run(&["plans", "order", "999"])
        .await
        .failed(1)
        .to_owned();
    assert!(
        line.contains("refused the API key") && line.contains("BCK.APIKEY.0004"),
        "{line}"
    );
    let line = anon
        .with_key("not-a-key")
        .run(&["plans", "balance", "1"])
        .await
        .failed(1)
        .to_owned();
    assert!(line.starts_with("error: invalid API key"), "{line}");
    let line = anon
        .run(&["plans", "order", "1"])
        .await
        .failed(1)
        .to_owned();
    assert!(
        line.contains("needs an API key") && line.contains("NVM_API_KEY"),
        "{line}"
    );

    // Nothing listens on a port just released.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let line = Nvm::new(&dead)
        .as_account(&acct)
        .run(&["plans", "balance", "1"])
        .await
        .failed(1)
        .to_owned();
    assert_eq!(
        line,
        format!(
            "error: cannot reach the backend at {dead} (is `nvm-payments dev-server` running?)"
        )
    );
    let line = Nvm::new(&dead)
        .run(&["accounts", "create"])
        .await
        .failed(1)
        .to_owned();
    assert!(
        line.contains(&format!("cannot reach the backend at {dead}")),
        "{line}"
    );

    // The flag wins over the environment.
    let plan = server
        .payments(&acct)
        .plans()
        .register_credits_plan(
            nvm_payments::types::PlanMetadata::named("P"),
            nvm_payments::get_free_price_config(),
            nvm_payments::get_fixed_credits_config(Credits::from(5u64), Credits::from(1u64)),
        )
        .await
        .unwrap()
        .to_string();
    nvm.with_env("NVM_BACKEND_URL", &dead)
        .run(&["plans", "get", &plan])
        .await
        .ok();

    // A slow backend is cut off by --timeout-secs; a reply lost after an order is
    // reported as an unknown outcome.
    server.faults().set(
        Fault::new("/api/v1/protocol/plans")
            .method("GET")
            .latency_ms(3_000),
    );
    let line = anon
        .run(&["plans", "get", &plan, "--timeout-secs", "1"])
        .await
        .failed(1)
        .to_owned();
    assert!(
        line.contains("did not answer") && line.contains("--timeout-secs"),
        "{line}"
    );
    server.faults().clear();
    server.faults().set(
        Fault::new("/api/v1/protocol/plans")
            .method("POST")
            .drop_connection()
            .after_handler()
            .times(1),
    );
    let line = nvm
        .run(&["plans", "order", &plan])
        .await
        .failed(1)
        .to_owned();
    assert!(line.contains("outcome is unknown"), "{line}");
    server.faults().clear();

    let transcript = anon.transcript();
    for key in [acct.api_key.expose(), stranger.api_key.expose()] {
        assert!(!transcript.contains(key.split_once(':').unwrap().1));
    }
    other.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_is_example_rich_and_never_shows_the_key() {
    let server = DevServer::start().await.unwrap();
    let acct = server.create_account(None);
    let nvm = Nvm::new(server.base_url()).as_account(&acct);
    for args in [
        &["--help"][..],
        &["plans", "--help"],
        &["plans", "register-credits", "--help"],
        &["token", "x402", "--help"],
        &["agents", "register", "--help"],
    ] {
        let out = nvm.run(args).await;
        assert!(out.ok().contains("Examples:") || out.stdout.contains("Commands:"));
        assert!(out.stdout.contains("NVM_API_KEY"), "{}", out.stdout);
    }
    assert!(!nvm
        .transcript()
        .contains(acct.api_key.expose().split_once(':').unwrap().1));
    server.shutdown().await.unwrap();
}

/// Kills the child on drop so a failed assertion does not leave a server running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_command_starts_and_answers() {
    let mut child = Reaped(
        Command::new(BIN)
            .args(["dev-server", "--port", "0"])
            .env_remove("NVM_DEVSERVER_HOST")
            .env_remove("NVM_DEVSERVER_PORT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary started"),
    );
    let stdout = child.0.stdout.take().unwrap();
    // Keep the pipe open: the server prints more, and a closed stdout would kill it.
    let (first, _stdout) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).map(|_| (line, reader))
    })
    .await
    .unwrap()
    .unwrap();
    let url = first
        .trim()
        .strip_prefix("nvm-payments devserver listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let info = reqwest::get(format!("{url}/")).await.unwrap();
    assert!(info.status().is_success());
    let info: Value = info.json().await.unwrap();
    assert!(info["deployment"]["contracts"].is_object(), "{info}");
    let account = Nvm::new(&url).create_account("via-cli").await;
    assert!(account.api_key.expose().starts_with("local:"));
    drop(child);
}
