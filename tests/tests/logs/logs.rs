//! What the logs hold after a full partner journey: every request line
//! carries its trace id, and no password, token, product key or link code
//! appears anywhere.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use crate::{helpers::*, journey::*};

/// Log output kept in memory until the test has read it (then dropped).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Option<Vec<u8>>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(b) = self.0.lock().unwrap().as_mut() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// The capture is the process's global subscriber (a thread-scoped one misses
// spans first seen on other threads), so this test has a binary of its own:
// a request another test began before the subscriber was set would log its
// access line outside any span the capture knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_logs_trace_ids_and_no_secret() {
    let captured = Captured(Arc::new(Mutex::new(Some(Vec::new()))));
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            "info,sqlx=warn,h2=warn,tower=warn,sovra_runtime=debug,sovra_identity=debug,\
             sovra_relationships=debug,sovra_commerce=debug,sovra=debug",
        )
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("no other test sets a subscriber");

    let app = TestApp::spawn(Backend::Sqlite).await;
    let Journey {
        partner,
        agent,
        wrong,
        code,
        customer_token,
        key,
        tampered,
    } = journey(&app).await;
    let operator = app.operator.clone();
    app.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().take().unwrap()).unwrap();
    let rpc_lines: Vec<&str> = logs.lines().filter(|l| l.contains("\"rpc ")).collect();
    assert!(rpc_lines.len() >= 10, "too few request lines:\n{logs}");
    for line in &rpc_lines {
        assert!(
            line.contains("\"trace_id\":\""),
            "a request line without its trace id: {line}"
        );
    }
    let key_plain: String = key.chars().filter(|c| *c != '-').collect();
    let secrets = [
        ("the password", PASSWORD.to_owned()),
        ("a wrong password", wrong),
        ("the partner admin's token", partner.admin_token.clone()),
        ("the agent's token", agent.clone()),
        ("the customer's token", customer_token.clone()),
        ("the operator's token", operator),
        ("the product key", key.clone()),
        ("the product key without dashes", key_plain),
        ("the link code", code.clone()),
        ("a tampered link code", tampered),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(&secret), "{what} appears in the logs");
        // Nor any long piece of it (a token's signature, a code's tag).
        if secret.len() > 40 {
            let tail = &secret[secret.len() - 30..];
            assert!(!logs.contains(tail), "part of {what} appears in the logs");
        }
    }
}
