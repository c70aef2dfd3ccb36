//! The sandbox every test starts: a real app on port 0 over an isolated
//! database, a manual clock, an operator token, and typed clients.

use std::{path::PathBuf, sync::Arc};

use sovra::App;
use sovra_proto::identity::v1 as pb;
use sovra_runtime::{
    auth::{Authority, Keyring},
    clock::ManualClock,
    config::{LoadOptions, Settings},
};
use sqlx::Connection;
use tokio::sync::oneshot;
use tonic::{transport::Channel, Code, Request, Status};
use tonic_types::StatusExt;

pub const PASSWORD: &str = "Correct-Horse-9";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend.
#[macro_export]
macro_rules! backend_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::postgres_available().await {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        }
    };
}

fn pg_base_url() -> String {
    std::env::var("SOVRA_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// True when PostgreSQL answers. Locally a miss is reported loudly and the
/// PostgreSQL half skipped; under CI=true it fails the test.
pub async fn postgres_available() -> bool {
    match sqlx::postgres::PgConnection::connect(&pg_base_url()).await {
        Ok(c) => {
            let _ = c.close().await;
            true
        }
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!(
                    "PostgreSQL is required under CI=true and is unreachable at {}: {e}",
                    pg_base_url()
                );
            }
            eprintln!(
                "\n!!! SKIPPED the PostgreSQL half: cannot reach {} ({e}). Start PostgreSQL or set SOVRA_TEST_POSTGRES_URL.\n",
                pg_base_url()
            );
            false
        }
    }
}

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Settings for a test app of `instance` over `database_url`.
pub fn settings(instance: &str, database_url: &str) -> Settings {
    Settings::load(&LoadOptions {
        config_dir: Some(config_dir()),
        instance: Some(instance.into()),
        overrides: vec![
            ("server.listen".into(), "127.0.0.1:0".into()),
            ("identity.database_url".into(), database_url.into()),
            // Cheap hashes keep the suite fast; the algorithm is the same.
            ("identity.password_memory_kib".into(), "64".into()),
            ("identity.password_iterations".into(), "1".into()),
        ],
        ..Default::default()
    })
    .expect("test settings load")
}

/// An isolated database: a fresh SQLite file or a fresh PostgreSQL database.
pub struct TestDb {
    pub url: String,
    dir: Option<PathBuf>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let id = uuid::Uuid::new_v4().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("sovra-test-{id}"));
                std::fs::create_dir_all(&dir).unwrap();
                TestDb {
                    url: format!("sqlite://{}?mode=rwc", dir.join("identity.db").display()),
                    dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("sovra_t_{id}");
                let mut c = sqlx::postgres::PgConnection::connect(&pg_base_url())
                    .await
                    .unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut c)
                    .await
                    .unwrap();
                let _ = c.close().await;
                let base = pg_base_url();
                let (prefix, _) = base.rsplit_once('/').unwrap();
                TestDb {
                    url: format!("{prefix}/{name}"),
                    dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(name) = self.pg_name.take() {
            // Drop from a thread of its own: Drop can't await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&pg_base_url()).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut c)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A running Sovra and what tests need to drive it.
pub struct TestApp {
    pub channel: Channel,
    pub clock: ManualClock,
    pub authority: Authority,
    pub operator: String,
    pub db_url: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: Option<TestDb>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_instance(backend, "global").await
    }

    pub async fn spawn_instance(backend: Backend, instance: &str) -> TestApp {
        let db = TestDb::new(backend).await;
        let mut app = Self::start(&settings(instance, &db.url), Arc::new(Keyring::generate()))
            .await
            .unwrap();
        app._db = Some(db);
        app
    }

    /// Starts an app over `settings` (the database is the caller's).
    pub async fn start(settings: &Settings, keyring: Arc<Keyring>) -> anyhow::Result<TestApp> {
        let clock = ManualClock::default();
        let app = App::build(settings, keyring, Arc::new(clock.clone())).await?;
        let addr = app.addr();
        let authority = app.authority().clone();
        let operator = authority.issue_operator(24 * 3600).value;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await?;
        Ok(TestApp {
            channel,
            clock,
            authority,
            operator,
            db_url: settings.identity.database_url.clone(),
            stop: Some(stop),
            server: Some(server),
            _db: None,
        })
    }

    /// Stops serving and waits for the drain.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn service_token(&self) -> String {
        self.authority.issue_service("relationships", 3600).value
    }

    pub fn tenants(&self) -> tenant_service_client::TenantServiceClient<Channel> {
        tenant_service_client::TenantServiceClient::new(self.channel.clone())
    }

    pub fn users(&self) -> user_service_client::UserServiceClient<Channel> {
        user_service_client::UserServiceClient::new(self.channel.clone())
    }

    pub fn auth(&self) -> auth_service_client::AuthServiceClient<Channel> {
        auth_service_client::AuthServiceClient::new(self.channel.clone())
    }

    pub fn access(&self) -> access_service_client::AccessServiceClient<Channel> {
        access_service_client::AccessServiceClient::new(self.channel.clone())
    }

    /// Creates a tenant with a global admin `admin@<domain>`; returns it and
    /// the admin's token.
    pub async fn tenant(&self, kind: TenantKind, name: &str) -> Tenant {
        let domain = format!(
            "{}-{}.example",
            name.to_lowercase().replace(' ', "-"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let resp = self
            .tenants()
            .create_tenant(req(
                &self.operator,
                CreateTenantRequest {
                    kind: kind as i32,
                    display_name: name.into(),
                    primary_domain: domain.clone(),
                    first_admin: Some(FirstAdmin {
                        user_principal_name: format!("admin@{domain}"),
                        display_name: format!("{name} Admin"),
                        password: PASSWORD.into(),
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let t = resp.tenant.unwrap();
        let admin = resp.first_admin.unwrap();
        let token = self.sign_in(&admin.user_principal_name, PASSWORD).await;
        Tenant {
            id: t.id,
            domain,
            admin_id: admin.id,
            admin_token: token,
        }
    }

    pub async fn sign_in(&self, upn: &str, password: &str) -> String {
        self.auth()
            .sign_in(SignInRequest {
                user_principal_name: upn.into(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("sign-in of {upn} failed: {s:?}"))
            .into_inner()
            .access_token
    }

    /// Creates a user in `tenant` (by `token`) and signs it in.
    pub async fn user(
        &self,
        token: &str,
        tenant: &Tenant,
        alias: &str,
        role: CompanyRole,
        access: SupportedCompaniesAccess,
    ) -> TestUser {
        let upn = format!("{alias}@{}", tenant.domain);
        let u = self
            .users()
            .create_user(req(
                token,
                CreateUserRequest {
                    tenant_id: tenant.id.clone(),
                    user_principal_name: upn.clone(),
                    display_name: alias.into(),
                    company_role: role as i32,
                    supported_companies_access: access as i32,
                    password: PASSWORD.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("creating {upn} failed: {s:?}"))
            .into_inner()
            .user
            .unwrap();
        let token = self.sign_in(&upn, PASSWORD).await;
        TestUser {
            id: u.id,
            upn,
            token,
        }
    }

    /// Pushes a delegated grant as the relationships service would.
    pub async fn grant(
        &self,
        partner: &Tenant,
        customer: &Tenant,
        state: DelegatedGrantState,
        version: i64,
    ) -> ApplyDelegatedGrantResponse {
        self.access()
            .apply_delegated_grant(req(
                &self.service_token(),
                ApplyDelegatedGrantRequest {
                    partner_tenant_id: partner.id.clone(),
                    customer_tenant_id: customer.id.clone(),
                    relationship_id: "rel-1".into(),
                    state: state as i32,
                    version,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Counts rows straight from the database, to prove a rejection wrote nothing.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&self.db_url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut c).await.unwrap();
        let _ = c.close().await;
        n
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub domain: String,
    pub admin_id: String,
    pub admin_token: String,
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub upn: String,
    pub token: String,
}

/// A request carrying `authorization: Bearer <token>`.
pub fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// An UpdateUser request applying `paths` of `user` (which names the user by id).
pub fn update_user(
    token: &str,
    tenant_id: &str,
    user: User,
    paths: &[&str],
) -> Request<UpdateUserRequest> {
    req(
        token,
        UpdateUserRequest {
            tenant_id: tenant_id.into(),
            user: Some(user),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        },
    )
}

/// Asserts a call failed with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "unexpected status: {s:?}");
            assert!(
                s.get_details_error_info().is_some(),
                "every error carries ErrorInfo: {s:?}"
            );
            s
        }
    }
}

/// Asserts INVALID_ARGUMENT naming `field` in a BadRequest violation.
#[track_caller]
pub fn expect_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) -> Status {
    let s = expect_code(result, Code::InvalidArgument);
    let bad = s
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details: {s:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "expected a violation on `{field}`, got {:?}",
        bad.field_violations
    );
    s
}

pub use pb::*;
