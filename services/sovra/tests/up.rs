//! `sovra up` as people run it: the binary makes its CA and certificates on
//! first start, serves mutual TLS, and applies a changed configuration on
//! SIGHUP — flags change, the change is audited, nothing restarts.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use sovra_proto::identity::v1 as pb;
use sovra_runtime::tls::{self, Connector};
use tonic::{transport::Channel, Request};

struct Up {
    child: Child,
    addr: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, local: &Path, extra: &[&str]) -> Up {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sovra"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .arg("--config-dir")
        .arg(&config)
        .arg("--config-file")
        .arg(local)
        // Only SIGHUP reloads here, so the test shows that it does.
        .env("SOVRA__SERVER__CONFIG_RELOAD_SECS", "0")
        .env("SOVRA__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("SOVRA__IDENTITY__PASSWORD_MEMORY_KIB", "64")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sovra up starts");
    // Read stdout to the end on a thread of its own: closing the pipe early
    // would fail the server's later prints.
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(a) = line.trim().strip_prefix("gRPC endpoint") {
                let _ = tx.send(a.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("sovra up prints its endpoint");
    Up { child, addr }
}

fn channel(up: &Up, data: &Path) -> Channel {
    let cfg = tls::client_config("global", &data.join("tls/ca.pem"), None).unwrap();
    sovra_runtime::peers::channel(&format!("https://{}", up.addr), Some(Connector::fixed(cfg)))
        .unwrap()
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn product_keys_on(
    tenants: &mut pb::tenant_service_client::TenantServiceClient<Channel>,
    token: &str,
) -> bool {
    tenants
        .get_features(authed(token, pb::GetFeaturesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .features
        .iter()
        .any(|f| f.name == "product_keys" && f.enabled)
}

#[tokio::test]
async fn sovra_up_serves_mutual_tls_and_reloads_flags_on_sighup() {
    let dir = std::env::temp_dir().join(format!("sovra-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("local.toml");
    std::fs::write(&local, "# local overrides\n").unwrap();
    let up = start(&dir, &local, &[]);
    let data = dir.join("data");
    for f in [
        "ca.pem",
        "ca.key",
        "identity.pem",
        "relationships.key",
        "commerce.pem",
    ] {
        assert!(data.join("tls").join(f).is_file(), "{f} was not made");
    }
    let token = std::fs::read_to_string(data.join("operator.token")).unwrap();
    let token = token.trim();
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel(&up, &data));
    assert!(product_keys_on(&mut tenants, token).await);

    // The Kubernetes probe: grpc.health.v1 over mutual TLS, as the service.
    let tls_dir = data.join("tls");
    let probe = |service: &str| {
        Command::new(env!("CARGO_BIN_EXE_sovra"))
            .args(["probe", service, "--config-dir"])
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config"))
            .env("SOVRA__SERVER__LISTEN", &up.addr)
            .env("SOVRA__TLS__MODE", "mutual")
            .env("SOVRA__TLS__CA_FILE", tls_dir.join("ca.pem"))
            .env("SOVRA__TLS__CERT_DIR", &tls_dir)
            .output()
            .unwrap()
    };
    let ok = probe("commerce");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let unknown = probe("billing");
    assert!(!unknown.status.success());

    // A plaintext client gets no answer from a TLS endpoint.
    let plain = Channel::from_shared(format!("http://{}", up.addr))
        .unwrap()
        .connect_lazy();
    assert!(pb::tenant_service_client::TenantServiceClient::new(plain)
        .get_features(authed(token, pb::GetFeaturesRequest::default()))
        .await
        .is_err());

    // Turn product keys off in the local file and send SIGHUP.
    std::fs::write(&local, "[features]\nproduct_keys = false\n").unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut off = false;
    for _ in 0..100 {
        if !product_keys_on(&mut tenants, token).await {
            off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(off, "product_keys still on after SIGHUP");
    let events = tenants
        .list_audit_events(authed(token, pb::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events.iter().any(|e| e.target == "product_keys turned off"),
        "{events:?}"
    );
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sovra up --database-url` runs the same single process over PostgreSQL
/// (the benchmark suite runs Sovra's scenarios on both backends this way).
#[tokio::test]
async fn sovra_up_runs_on_postgres_databases_named_by_a_template() {
    use sqlx::Connection;
    let bad = Command::new(env!("CARGO_BIN_EXE_sovra"))
        .args([
            "up",
            "--plaintext",
            "--database-url",
            "postgres://127.0.0.1/x",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must contain `{service}`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let base = std::env::var("SOVRA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let Ok(mut pg) = sqlx::postgres::PgConnection::connect(&base).await else {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "PostgreSQL is required under CI=true ({base})"
        );
        eprintln!("PostgreSQL not reachable at {base}: skipped locally");
        return;
    };
    let stem = format!("sovra_up_{}", std::process::id());
    for s in ["identity", "relationships", "commerce"] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {stem}_{s} WITH (FORCE)"))
            .execute(&mut pg)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {stem}_{s}"))
            .execute(&mut pg)
            .await
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("sovra-up-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("local.toml");
    std::fs::write(&local, "# local overrides\n").unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let template = format!("{prefix}/{stem}_{{service}}");
    let up = start(&dir, &local, &["--database-url", &template]);
    let data = dir.join("data");
    let token = std::fs::read_to_string(data.join("operator.token")).unwrap();
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel(&up, &data));
    let created = tenants
        .create_tenant(authed(
            token.trim(),
            pb::CreateTenantRequest {
                kind: pb::TenantKind::Customer as i32,
                display_name: "Fabrikam".into(),
                primary_domain: format!("up-{}.example", std::process::id()),
                first_admin: Some(pb::FirstAdmin {
                    user_principal_name: format!("admin@up-{}.example", std::process::id()),
                    display_name: "Admin".into(),
                    password: "Correct-Horse-42".into(),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    drop(up);
    // The tenant is in PostgreSQL, and no SQLite file was made.
    let mut idb = sqlx::postgres::PgConnection::connect(&format!("{prefix}/{stem}_identity"))
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tenants WHERE id = $1")
        .bind(&created.id)
        .fetch_one(&mut idb)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let _ = idb.close().await;
    assert!(!data.join("identity.db").exists());
    for s in ["identity", "relationships", "commerce"] {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {stem}_{s} WITH (FORCE)"))
            .execute(&mut pg)
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
